from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from invseg.data import discover, synthesize
from invseg.data.synth import held_out_folder


def rel_files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize(
    ("layout", "expected"),
    [
        (
            "brats2020",
            [
                *[
                    f"BraTS20_Training_001/BraTS20_Training_001_{m}.nii.gz"
                    for m in ("flair", "seg", "t1", "t1ce", "t2")
                ],
                *[
                    f"BraTS20_Validation_001/BraTS20_Validation_001_{m}.nii.gz"
                    for m in ("flair", "t1", "t1ce", "t2")
                ],
            ],
        ),
        (
            "brats2021",
            [
                *[
                    f"BraTS2021_00000/BraTS2021_00000_{m}.nii.gz"
                    for m in ("flair", "seg", "t1", "t1ce", "t2")
                ],
                *[
                    f"BraTS2021_00001/BraTS2021_00001_{m}.nii.gz"
                    for m in ("flair", "t1", "t1ce", "t2")
                ],
            ],
        ),
        (
            "brats2023",
            [
                *[
                    f"BraTS-GLI-00000-000/BraTS-GLI-00000-000-{m}.nii.gz"
                    for m in ("seg", "t1c", "t1n", "t2f", "t2w")
                ],
                *[
                    f"BraTS-GLI-00001-000/BraTS-GLI-00001-000-{m}.nii.gz"
                    for m in ("t1c", "t1n", "t2f", "t2w")
                ],
            ],
        ),
        (
            "msd",
            [
                "dataset.json",
                "imagesTr/BRATS_001.nii.gz",
                "imagesTs/BRATS_002.nii.gz",
                "labelsTr/BRATS_001.nii.gz",
            ],
        ),
        (
            "nnunet",
            [
                "dataset.json",
                *[f"imagesTr/BraTS_001_{c:04d}.nii.gz" for c in range(4)],
                *[f"imagesTs/BraTS_002_{c:04d}.nii.gz" for c in range(4)],
                "labelsTr/BraTS_001.nii.gz",
            ],
        ),
    ],
)
def test_synth_writes_the_exact_layout(tmp_path, layout, expected):
    info = synthesize("brats", tmp_path, cases=1, unlabeled=1, shape=(16, 16, 16), layout=layout)
    assert rel_files(tmp_path) == sorted(expected)
    assert info.layout == layout and discover(tmp_path) == info
    assert [c.has_label for c in info.cases] == [True, False]


def test_synth_iseg_analyze_files(iseg32):
    root = iseg32.root
    assert rel_files(root) == sorted(
        f"subject-1-{m}.{e}" for m in ("T1", "T2", "label") for e in ("hdr", "img")
    )
    img = nib.load(root / "subject-1-label.hdr")
    assert isinstance(img, nib.AnalyzeImage) and img.shape == (32, 32, 32, 1)
    values = set(np.unique(np.asarray(img.dataobj)).tolist())
    assert values == {0, 10, 150, 250}
    t1 = np.asarray(nib.load(root / "subject-1-T1.hdr").dataobj)[..., 0].astype(float)
    lab = np.asarray(img.dataobj)[..., 0]
    assert t1[lab == 250].mean() > t1[lab == 150].mean() > t1[lab == 10].mean()  # T1: WM>GM>CSF


def test_synth_brats_labels_and_contrasts(brats32):
    case = brats32.cases[0]
    lab = np.asarray(nib.load(case.label).dataobj)
    assert set(np.unique(lab).tolist()) == {0, 1, 2, 4}
    t1, t1ce, _t2, flair = (np.asarray(nib.load(p).dataobj).astype(float) for p in case.images)
    brain = (t1 > 0) & (lab == 0)
    assert t1ce[lab == 4].mean() > 1.3 * t1ce[brain].mean()  # enhancing rim bright on T1ce
    assert flair[lab == 2].mean() > 1.3 * flair[brain].mean()  # edema bright on FLAIR
    img = nib.load(case.images[0])
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    assert np.allclose(img.header.get_zooms(), 1.0) and not np.allclose(img.affine[:3, 3], 0)


def test_synth_is_deterministic(tmp_path):
    a = synthesize("brats", tmp_path / "a", cases=1, shape=(16, 16, 16), seed=3)
    b = synthesize("brats", tmp_path / "b", cases=1, shape=(16, 16, 16), seed=3)
    c = synthesize("brats", tmp_path / "c", cases=1, shape=(16, 16, 16), seed=4)
    arr = [np.asarray(nib.load(i.cases[0].images[1]).dataobj) for i in (a, b, c)]
    assert np.array_equal(arr[0], arr[1]) and not np.array_equal(arr[0], arr[2])


def test_synth_lps_anisotropic_uncompressed(tmp_path):
    info = synthesize(
        "brats",
        tmp_path,
        cases=1,
        shape=(20, 18, 16),
        orientation="LPS",
        spacing=(1.5, 1.0, 2.5),
        compress=False,
        layout="brats2023",
    )
    img = nib.load(info.cases[0].images[0])
    assert info.cases[0].images[0].name.endswith("-t1n.nii")
    assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
    assert np.allclose(img.header.get_zooms(), (1.5, 1.0, 2.5)) and img.shape == (20, 18, 16)
    # the anatomy stays in place in world space: same as the RAS version resampled to LPS
    ras = synthesize(
        "brats",
        tmp_path / "ras",
        cases=1,
        shape=(20, 18, 16),
        spacing=(1.5, 1.0, 2.5),
        layout="brats2023",
    )
    r = nib.load(ras.cases[0].images[0])
    assert np.array_equal(np.asarray(r.dataobj)[::-1, ::-1, :], np.asarray(img.dataobj))
    assert np.allclose(r.affine @ [0, 0, 0, 1], img.affine @ [19, 17, 0, 1])


def test_synth_msd_json_and_4d(tmp_path):
    info = synthesize("brats", tmp_path, cases=2, shape=(16, 16, 16), layout="msd")
    meta = json.loads((tmp_path / "dataset.json").read_text())
    assert meta["labels"]["1"] == "edema" and meta["numTraining"] == 2
    assert nib.load(info.cases[0].images[0]).shape == (16, 16, 16, 4)
    lab = np.asarray(nib.load(info.cases[0].label).dataobj)
    assert set(np.unique(lab).tolist()) <= {0, 1, 2, 3}


def test_synth_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="Did you mean 'brats'"):
        synthesize("brast", tmp_path)
    with pytest.raises(ValueError, match="layout for iseg"):
        synthesize("iseg", tmp_path, layout="msd")
    with pytest.raises(ValueError, match="at least 16"):
        synthesize("brats", tmp_path, shape=(8, 8, 8))


@pytest.mark.parametrize("shape", [(16, 16, 8), (15, 17, 9)])
def test_gaussian_noise_field_keeps_odd_shapes_without_fft_warnings(shape) -> None:
    import warnings

    from invseg.data.synth.anatomy import gaussian_noise_field

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy 2 warns on s= without axes=
        f = gaussian_noise_field(np.random.default_rng(0), shape, 2.0)
    g = gaussian_noise_field(np.random.default_rng(0), shape, 2.0)
    assert f.shape == shape and f.dtype == np.float32 and np.array_equal(f, g)
    assert abs(float(f.mean())) < 1e-5 and abs(float(f.std()) - 1.0) < 1e-3
    # low-passed: neighbours correlate (white noise would give about 0)
    assert float(np.mean(f[1:] * f[:-1])) > 0.5


def _arrays(info) -> list[np.ndarray]:
    files = [p for c in info.cases for p in (*c.images, *([c.label] if c.label else []))]
    return [np.asarray(nib.load(p).dataobj) for p in files]


@pytest.mark.parametrize(
    ("kind", "layout"),
    [("brats", "brats2020"), ("brats", "brats2023"), ("brats", "msd"), ("iseg", "iseg")],
)
def test_held_out_cases_share_the_layout_and_no_array_with_training(tmp_path, kind, layout):
    root = tmp_path / "ds"
    info = synthesize(kind, root, cases=2, test_cases=2, shape=(16, 16, 16), layout=layout)
    held = discover(held_out_folder(root))
    assert held.root == tmp_path / "ds_test"
    assert held.layout == info.layout == layout
    assert held.modalities == info.modalities
    assert len(held.cases) == 2 and all(c.has_label for c in held.cases)
    assert not {c.case_id for c in held.cases} & {c.case_id for c in info.cases}
    # independent streams: not the training cases, nor those of a larger set of the same seed
    bigger = synthesize(kind, tmp_path / "big", cases=4, shape=(16, 16, 16), layout=layout)
    train = _arrays(info) + _arrays(bigger)
    for a in _arrays(held):
        assert not any(a.shape == b.shape and np.array_equal(a, b) for b in train)


def test_held_out_cases_leave_the_training_cases_unchanged(tmp_path):
    plain = synthesize("brats", tmp_path / "a", cases=2, shape=(16, 16, 16), seed=5)
    both = synthesize("brats", tmp_path / "b", cases=2, shape=(16, 16, 16), seed=5, test_cases=1)
    assert all(np.array_equal(x, y) for x, y in zip(_arrays(plain), _arrays(both), strict=True))
    assert not (tmp_path / "a_test").exists()
    held = discover(tmp_path / "b_test")
    assert [c.case_id for c in held.cases] == ["BraTS20_Training_003"]


def test_held_out_msd_dataset_json_names_its_own_cases(tmp_path):
    kw = {"cases": 2, "unlabeled": 1, "shape": (16, 16, 16), "layout": "msd"}
    synthesize("brats", tmp_path / "m", test_cases=2, **kw)
    meta = json.loads((tmp_path / "m_test" / "dataset.json").read_text())
    assert meta["numTraining"] == 2 and meta["numTest"] == 0 and meta["test"] == []
    images = [e["image"] for e in meta["training"]]
    assert images == ["./imagesTr/BRATS_004.nii.gz", "./imagesTr/BRATS_005.nii.gz"]
    names = [f"{d}/BRATS_00{i}.nii.gz" for d in ("imagesTr", "labelsTr") for i in (4, 5)]
    assert rel_files(tmp_path / "m_test") == sorted(["dataset.json", *names])


def test_cli_test_cases_writes_the_held_out_folder(tmp_path, capsys):
    from invseg.cli import main

    out = tmp_path / "cli"
    argv = ["data", "synth", "--kind", "brats", "-o", str(out), "--cases", "1"]
    assert main([*argv, "--shape", "16", "16", "16", "--test-cases", "1"]) == 0
    assert f"1 held-out cases to {tmp_path / 'cli_test'}" in capsys.readouterr().out
    assert [c.case_id for c in discover(tmp_path / "cli_test").cases] == ["BraTS20_Training_002"]
    with pytest.raises(ValueError, match="test_cases >= 0"):
        synthesize("brats", tmp_path / "neg", cases=1, shape=(16, 16, 16), test_cases=-1)
