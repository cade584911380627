from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from invseg.data import DataError, cases_from_paths, convention_from_dataset_json, discover
from tests.data.conftest import write_analyze, write_nifti

BRATS = {
    "brats2020": ("BraTS20_Training_{:03d}", "_", ("t1", "t1ce", "t2", "flair")),
    "brats2021": ("BraTS2021_{:05d}", "_", ("t1", "t1ce", "t2", "flair")),
    "brats2023": ("BraTS-GLI-{:05d}-000", "-", ("t1n", "t1c", "t2w", "t2f")),
}


def make_brats(root: Path, layout: str, n: int, ext: str, *, seg: bool = True) -> list[str]:
    pattern, sep, mods = BRATS[layout]
    ids = []
    for i in range(1, n + 1):
        case = pattern.format(i)
        # written in reverse order: discovery must still return the fixed modality order
        for m in (*reversed(mods), *(["seg"] if seg else [])):
            write_nifti(root / case / f"{case}{sep}{m}{ext}", np.zeros((4, 4, 4), np.float32))
        ids.append(case)
    return ids


@pytest.mark.parametrize("ext", [".nii.gz", ".nii"])
@pytest.mark.parametrize("layout", list(BRATS))
def test_brats_layouts_are_detected_with_fixed_modality_order(tmp_path, layout, ext):
    ids = make_brats(tmp_path, layout, 2, ext)
    info = discover(tmp_path)
    assert info.layout == layout
    assert info.modalities == BRATS[layout][2]
    assert [c.case_id for c in info.cases] == ids
    sep = BRATS[layout][1]
    for case in info.cases:
        assert [p.name for p in case.images] == [
            f"{case.case_id}{sep}{m}{ext}" for m in info.modalities
        ]
        assert case.label.name == f"{case.case_id}{sep}seg{ext}"
    assert info.convention.name == ("brats2023" if layout == "brats2023" else "brats")


def test_brats_case_without_seg_is_prediction_only(tmp_path):
    make_brats(tmp_path, "brats2020", 1, ".nii.gz")
    make_brats(tmp_path / "BraTS20_Validation_001", "brats2020", 0, ".nii.gz")
    case = "BraTS20_Validation_001"
    for m in ("t1", "t1ce", "t2", "flair"):
        write_nifti(tmp_path / case / f"{case}_{m}.nii.gz", np.zeros((4, 4, 4), np.float32))
    info = discover(tmp_path)
    assert [(c.case_id, c.label is None) for c in info.cases] == [
        ("BraTS20_Training_001", False),
        ("BraTS20_Validation_001", True),
    ]
    assert len(info.labelled) == 1


def test_single_case_folder_and_nested_archive_folder(tmp_path):
    make_brats(tmp_path / "MICCAI_BraTS2020_TrainingData", "brats2020", 2, ".nii.gz")
    assert len(discover(tmp_path).cases) == 2  # one nested sub-folder is followed
    one = discover(tmp_path / "MICCAI_BraTS2020_TrainingData" / "BraTS20_Training_002")
    assert [c.case_id for c in one.cases] == ["BraTS20_Training_002"]


def test_freely_named_seg_file_is_used_as_label(tmp_path):
    case = "BraTS20_Training_355"
    for m in ("t1", "t1ce", "t2", "flair"):
        write_nifti(tmp_path / case / f"{case}_{m}.nii", np.zeros((4, 4, 4), np.float32))
    write_nifti(tmp_path / case / "W39_1998.09.19_Segm.nii", np.zeros((4, 4, 4), np.uint8))
    assert discover(tmp_path).cases[0].label.name == "W39_1998.09.19_Segm.nii"


def test_missing_modality_names_the_file(tmp_path):
    make_brats(tmp_path, "brats2020", 1, ".nii.gz")
    (tmp_path / "BraTS20_Training_001" / "BraTS20_Training_001_flair.nii.gz").unlink()
    with pytest.raises(
        DataError, match=r"missing modality 'flair' \(expected BraTS20_Training_001_flair"
    ):
        discover(tmp_path)


def test_unknown_folder_lists_the_layouts_tried(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="matches no dataset layout") as err:
        discover(tmp_path)
    for name in ("brats2020", "brats2021", "brats2023", "msd", "nnunet", "iseg"):
        assert name in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_folder_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        discover(tmp_path / "nope")


MSD_JSON = {
    "name": "BRATS",
    "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
    "labels": {
        "0": "background",
        "1": "edema",
        "2": "non-enhancing tumor",
        "3": "enhancing tumour",
    },
}


@pytest.mark.parametrize("ext", [".nii.gz", ".nii"])
def test_msd_layout(tmp_path, ext):
    (tmp_path / "dataset.json").write_text(json.dumps(MSD_JSON))
    for i in (1, 2):
        write_nifti(
            tmp_path / "imagesTr" / f"BRATS_{i:03d}{ext}", np.zeros((4, 4, 4, 4), np.float32)
        )
        write_nifti(tmp_path / "labelsTr" / f"BRATS_{i:03d}{ext}", np.zeros((4, 4, 4), np.uint8))
    write_nifti(tmp_path / "imagesTs" / f"BRATS_003{ext}", np.zeros((4, 4, 4, 4), np.float32))
    (tmp_path / "imagesTr" / f"._BRATS_001{ext}").write_bytes(b"mac junk")  # MSD tar has these
    info = discover(tmp_path)
    assert info.layout == "msd"
    assert info.modalities == ("FLAIR", "T1w", "t1gd", "T2w")
    assert info.convention.name == "msd"
    assert [(c.case_id, len(c.images), c.label is not None) for c in info.cases] == [
        ("BRATS_001", 1, True),
        ("BRATS_002", 1, True),
        ("BRATS_003", 1, False),
    ]


@pytest.mark.parametrize("ext", [".nii.gz", ".nii"])
def test_nnunet_layout(tmp_path, ext):
    meta = {
        "channel_names": {"0": "T1", "1": "T1ce", "2": "T2", "3": "Flair"},
        "labels": {
            "background": 0,
            "whole tumor": [1, 2, 3],
            "tumor core": [2, 3],
            "enhancing tumor": 3,
        },
        "regions_class_order": [1, 2, 3],
        "file_ending": ext,
    }
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    for case in ("BraTS_001", "BraTS_002"):
        for c in (3, 1, 0, 2):
            write_nifti(
                tmp_path / "imagesTr" / f"{case}_{c:04d}{ext}", np.zeros((4, 4, 4), np.float32)
            )
        write_nifti(tmp_path / "labelsTr" / f"{case}{ext}", np.zeros((4, 4, 4), np.uint8))
    info = discover(tmp_path)
    assert info.layout == "nnunet"
    assert info.modalities == ("T1", "T1ce", "T2", "Flair")
    assert info.convention.name == "msd"  # nnU-Net's BraTS numbering equals MSD's
    case = info.cases[0]
    assert [p.name for p in case.images] == [f"BraTS_001_{c:04d}{ext}" for c in range(4)]
    assert case.label.name == f"BraTS_001{ext}"


def test_nnunet_missing_channel(tmp_path):
    meta = {
        "channel_names": {"0": "T1", "1": "T2"},
        "labels": {"background": 0, "a": 1},
        "file_ending": ".nii.gz",
    }
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    write_nifti(tmp_path / "imagesTr" / "X_0000.nii.gz", np.zeros((4, 4, 4), np.float32))
    with pytest.raises(DataError, match="missing X_0001.nii.gz"):
        discover(tmp_path)


def test_decathlon_without_dataset_json(tmp_path):
    write_nifti(tmp_path / "imagesTr" / "A.nii.gz", np.zeros((4, 4, 4, 2), np.float32))
    with pytest.raises(DataError, match="dataset.json"):
        discover(tmp_path)


@pytest.mark.parametrize("ext", [".hdr", ".nii.gz", ".nii"])
def test_iseg_layout(tmp_path, ext):
    for n in (1, 2, 10):
        for m in ("T1", "T2", "label"):
            if n == 10 and m == "label":
                continue
            data = np.zeros((4, 4, 4, 1), np.uint8)
            if ext == ".hdr":
                write_analyze(tmp_path / f"subject-{n}-{m}.hdr", data)
            else:
                write_nifti(tmp_path / f"subject-{n}-{m}{ext}", data)
    info = discover(tmp_path)
    assert info.layout == "iseg" and info.modalities == ("T1", "T2")
    assert [c.case_id for c in info.cases] == ["subject-1", "subject-2", "subject-10"]
    assert [p.name for p in info.cases[0].images] == [f"subject-1-T1{ext}", f"subject-1-T2{ext}"]
    assert info.cases[2].label is None


def test_cases_from_paths_groups_modality_files(tmp_path):
    make_brats(tmp_path, "brats2023", 2, ".nii.gz", seg=False)
    files = sorted((tmp_path / "BraTS-GLI-00001-000").iterdir())
    single = write_nifti(tmp_path / "other" / "brain4d.nii.gz", np.zeros((4, 4, 4, 4), np.float32))
    info, cases = cases_from_paths([*files, single])
    assert info is None  # mixed: one BraTS case + one generic 4-D file
    assert [(c.case_id, len(c.images)) for c in cases] == [
        ("brain4d", 1),
        ("BraTS-GLI-00001-000", 4),
    ]
    info, cases = cases_from_paths(files)
    assert info.layout == "brats2023" and info.convention.name == "brats2023"
    assert [p.name.split("-")[-1] for p in cases[0].images] == [
        "t1n.nii.gz",
        "t1c.nii.gz",
        "t2w.nii.gz",
        "t2f.nii.gz",
    ]


def test_cases_from_paths_dataset_and_case_folders(tmp_path):
    make_brats(tmp_path, "brats2021", 3, ".nii.gz")
    info, cases = cases_from_paths([tmp_path])
    assert info.layout == "brats2021" and len(cases) == 3
    info, cases = cases_from_paths([tmp_path / "BraTS2021_00002", tmp_path / "BraTS2021_00001"])
    assert [c.case_id for c in cases] == ["BraTS2021_00002", "BraTS2021_00001"]
    assert info is not None and info.layout == "brats2021"


def test_cases_from_paths_errors(tmp_path):
    make_brats(tmp_path, "brats2020", 1, ".nii.gz")
    case = tmp_path / "BraTS20_Training_001"
    with pytest.raises(DataError, match="no such file"):
        cases_from_paths([tmp_path / "missing.nii.gz"])
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(DataError, match="not an image"):
        cases_from_paths([tmp_path / "x.txt"])
    with pytest.raises(DataError, match="missing modality 't1ce'"):
        cases_from_paths([case / "BraTS20_Training_001_t1.nii.gz"])
    with pytest.raises(DataError, match="appears twice"):
        cases_from_paths(
            [
                case,
                case / "BraTS20_Training_001_t1.nii.gz",
                *[case / f"BraTS20_Training_001_{m}.nii.gz" for m in ("t1ce", "t2", "flair")],
            ]
        )
    with pytest.raises(DataError, match="not iseg"):
        cases_from_paths([tmp_path], layout="iseg")
    with pytest.raises(ValueError, match="Did you mean 'brats20"):
        cases_from_paths([tmp_path], layout="brats2012")


def test_convention_from_dataset_json_generic_classes():
    meta = {"name": "Heart", "labels": {"0": "background", "1": "left atrium"}}
    conv = convention_from_dataset_json(meta, where=Path("dataset.json"))
    assert (conv.kind, conv.class_values, conv.names) == (
        "classes",
        (0, 1),
        ("background", "left atrium"),
    )
    with pytest.raises(DataError, match="labels"):
        convention_from_dataset_json({}, where=Path("dataset.json"))


# ------------------------------------------------------------------ the layout registry
def test_registry_lists_every_layout_with_its_convention_and_modalities():
    from invseg.data import LAYOUTS, get_layout

    assert list(LAYOUTS) == ["msd", "nnunet", "brats2020", "brats2021", "brats2023", "iseg"]
    conventions = {name: layout.convention for name, layout in LAYOUTS.items()}
    assert conventions == {
        "msd": "msd",
        "nnunet": None,  # from dataset.json
        "brats2020": "brats",
        "brats2021": "brats",
        "brats2023": "brats2023",
        "iseg": "iseg",
    }
    assert get_layout("brats2023").label_convention().et_label == 3
    assert get_layout("BraTS2020").modalities == ("t1", "t1ce", "t2", "flair")
    with pytest.raises(ValueError, match="Did you mean 'brats2023'"):
        get_layout("brats2033")


def test_layout_writes_a_prediction_with_the_input_geometry(tmp_path):
    import nibabel as nib

    from invseg.data import get_layout

    affine = np.diag([-1.2, -0.9, 1.5, 1.0])
    labels = np.zeros((5, 4, 3), np.uint8)
    labels[1, 2, 0] = 3
    layout = get_layout("brats2023")
    path = layout.write_prediction(labels, tmp_path, "BraTS-GLI-00000-000", affine=affine)
    assert path == layout.prediction_path(tmp_path, "BraTS-GLI-00000-000")
    assert path.name == "BraTS-GLI-00000-000.nii.gz"
    img = nib.load(path)
    assert img.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(img.dataobj), labels)
    np.testing.assert_allclose(img.affine, affine)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary file left


def test_a_registered_layout_is_detected(tmp_path):
    from dataclasses import dataclass

    from invseg.data import LAYOUTS, Case, Layout
    from invseg.data.layouts import register_layout

    @dataclass(frozen=True)
    class Flat(Layout):
        def discover(self, root):
            files = sorted(root.glob("*_img.nii.gz"))
            if not files:
                return None
            return self.info(root, [Case(p.name[:-11], (p,)) for p in files])

    write_nifti(tmp_path / "a_img.nii.gz", np.zeros((4, 4, 4), np.float32))
    register_layout(Flat("flat", "<case>_img.nii.gz", ("t1",), "brats"))
    try:
        info = discover(tmp_path)
        assert (info.layout, [c.case_id for c in info.cases]) == ("flat", ["a"])
        assert info.convention.name == "brats"
        with pytest.raises(ValueError, match="already registered"):
            register_layout(Flat("flat", "", ()))
    finally:
        LAYOUTS.pop("flat")
