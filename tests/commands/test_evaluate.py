from __future__ import annotations

import math
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from invseg.commands.evaluate import evaluate, format_summary
from invseg.data import DataError, synthesize

SPACING = np.diag([2.0, 1.0, 1.0, 1.0])


def save(path: Path, data: np.ndarray, affine: np.ndarray = SPACING) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data.astype(np.uint8), affine), str(path))
    return path


def cube(value: int, start: tuple[int, int, int], size: int = 4, shape=(12, 12, 12)) -> np.ndarray:
    a = np.zeros(shape, np.uint8)
    a[tuple(slice(s, s + size) for s in start)] = value
    return a


def test_shifted_cubes_give_exact_dice_and_hd95(tmp_path):
    ref = cube(4, (3, 3, 3))
    pred = cube(4, (4, 3, 3))  # shifted one voxel (2 mm) along x: overlap 3*4*4 = 48 of 64
    save(tmp_path / "ref" / "case1.nii.gz", ref)
    save(tmp_path / "pred" / "case1.nii.gz", pred)
    df = evaluate(tmp_path / "pred", tmp_path / "ref", output_csv=tmp_path / "m.csv")
    row = df.iloc[0]
    assert row["case_id"] == "case1" and df.attrs["convention"] == "brats"  # 4 -> BraTS 2020/21
    for region in ("TC", "WT", "ET"):
        assert row[f"dice_{region}"] == pytest.approx(2 * 48 / 128)
        assert row[f"hd95_{region}"] == pytest.approx(2.0)  # spacing from the header
    csv = pd.read_csv(tmp_path / "m.csv")
    assert list(csv["case_id"]) == ["case1", "mean"]
    assert csv.loc[1, "dice_WT"] == pytest.approx(0.75)


def test_region_semantics_and_empty_masks(tmp_path):
    # reference: edema (2) only; prediction: same voxels as necrotic core (1)
    save(tmp_path / "ref" / "a.nii.gz", cube(2, (2, 2, 2)))
    save(tmp_path / "pred" / "a.nii.gz", cube(1, (2, 2, 2)))
    row = evaluate(tmp_path / "pred", tmp_path / "ref", labels="brats").iloc[0]
    assert row["dice_WT"] == 1.0 and row["hd95_WT"] == 0.0
    assert row["dice_TC"] == 0.0 and math.isnan(row["hd95_TC"])  # reference TC empty
    assert row["dice_ET"] == 1.0 and math.isnan(row["hd95_ET"])  # both empty


def test_msd_numbering(tmp_path):
    # MSD: 1 edema, 2 non-enhancing, 3 enhancing
    save(tmp_path / "ref" / "a.nii.gz", cube(1, (2, 2, 2)) + cube(3, (8, 8, 8), size=2))
    save(tmp_path / "pred" / "a.nii.gz", cube(2, (2, 2, 2)) + cube(3, (8, 8, 8), size=2))
    row = evaluate(tmp_path / "pred", tmp_path / "ref", labels="msd").iloc[0]
    assert row["dice_WT"] == 1.0 and row["dice_ET"] == 1.0
    assert row["dice_TC"] == pytest.approx(2 * 8 / (64 + 8 + 8))


def test_ambiguous_values_need_labels(tmp_path):
    save(tmp_path / "ref" / "a.nii.gz", cube(3, (2, 2, 2)))
    save(tmp_path / "pred" / "a.nii.gz", cube(3, (2, 2, 2)))
    with pytest.raises(DataError, match="brats2023.*msd"):
        evaluate(tmp_path / "pred", tmp_path / "ref")
    assert evaluate(tmp_path / "pred", tmp_path / "ref", labels="brats2023")["dice_ET"][0] == 1.0


def test_iseg_classes_with_surface_distances(tmp_path):
    ref = cube(10, (1, 1, 1)) + cube(150, (6, 6, 6)) + cube(250, (1, 7, 1), size=3)
    pred = cube(10, (1, 1, 1)) + cube(150, (7, 6, 6))
    save(tmp_path / "ref" / "subject-1.nii.gz", ref)
    save(tmp_path / "pred" / "subject-1.nii.gz", pred)
    df = evaluate(tmp_path / "pred", tmp_path / "ref")
    row = df.iloc[0]
    assert df.attrs["convention"] == "iseg"
    assert row["dice_CSF"] == 1.0 and row["asd_CSF"] == 0.0 and row["mhd_CSF"] == 0.0
    assert row["dice_GM"] == pytest.approx(0.75) and row["hd95_GM"] == pytest.approx(2.0)
    assert row["asd_GM"] > 0 and row["mhd_GM"] >= row["asd_GM"]
    assert row["dice_WM"] == 0.0 and math.isnan(row["asd_WM"])  # predicted WM empty
    text = format_summary(df)
    assert "1 case (labels: iseg)" in text and "CSF" in text and "WM in 1 case(s)" in text


def test_dataset_folder_as_reference(tmp_path):
    info = synthesize("brats", tmp_path / "data", cases=2, shape=(16, 16, 16))
    (tmp_path / "pred").mkdir()
    for case in info.cases:
        shutil.copy(case.label, tmp_path / "pred" / f"{case.case_id}.nii.gz")
    df = evaluate(tmp_path / "pred", tmp_path / "data")
    assert list(df["case_id"]) == ["BraTS20_Training_001", "BraTS20_Training_002", "mean"]
    assert (df[["dice_TC", "dice_WT", "dice_ET"]] == 1.0).all().all()


@pytest.mark.parametrize("what", ["shape", "affine"])
def test_geometry_mismatch_is_an_error(tmp_path, what):
    save(tmp_path / "ref" / "a.nii.gz", cube(4, (2, 2, 2)))
    if what == "shape":
        save(tmp_path / "pred" / "a.nii.gz", cube(4, (2, 2, 2), shape=(12, 12, 11)))
    else:
        save(tmp_path / "pred" / "a.nii.gz", cube(4, (2, 2, 2)), np.eye(4))
    with pytest.raises(DataError, match=f"geometry differs.*{what}"):
        evaluate(tmp_path / "pred", tmp_path / "ref")


def test_prediction_without_reference(tmp_path):
    save(tmp_path / "ref" / "a.nii.gz", cube(4, (2, 2, 2)))
    save(tmp_path / "pred" / "a.nii.gz", cube(4, (2, 2, 2)))
    save(tmp_path / "pred" / "b.nii.gz", cube(4, (2, 2, 2)))
    with pytest.raises(DataError, match="1 prediction.*no reference.*: b"):
        evaluate(tmp_path / "pred", tmp_path / "ref")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no prediction files"):
        evaluate(tmp_path / "empty", tmp_path / "ref")
