from __future__ import annotations

import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from invseg.commands.evaluate import evaluate, exit_status, format_summary
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


@pytest.mark.parametrize("scoring", ["none", "brats"])
def test_region_semantics_and_empty_masks(tmp_path, scoring):
    # reference: edema (2) only; prediction: same voxels as necrotic core (1)
    save(tmp_path / "ref" / "a.nii.gz", cube(2, (2, 2, 2)))
    save(tmp_path / "pred" / "a.nii.gz", cube(1, (2, 2, 2)))
    df = evaluate(tmp_path / "pred", tmp_path / "ref", labels="brats", scoring=scoring)
    row = df.iloc[0]
    assert row["dice_WT"] == 1.0 and row["hd95_WT"] == 0.0
    # one BraTS rule for empty masks whatever the scoring of missing cases:
    assert row["dice_TC"] == 0.0 and row["hd95_TC"] == 373.13  # reference TC empty, predicted not
    assert row["dice_ET"] == 1.0 and row["hd95_ET"] == 0.0  # both empty
    assert df.attrs["scoring"] == scoring


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
    # predicted WM empty: the BraTS rule for every distance
    assert row["dice_WM"] == 0.0
    assert row[["hd95_WM", "asd_WM", "mhd_WM"]].tolist() == [373.13] * 3
    text = format_summary(df)
    assert "1 case (labels: iseg)" in text and "CSF" in text and "undefined" not in text
    assert re.search(r"hd95 +0\.0000 +2\.0000 +373\.1300", text)


def test_dataset_folder_as_reference(tmp_path):
    info = synthesize("brats", tmp_path / "data", cases=2, shape=(16, 16, 16))
    (tmp_path / "pred").mkdir()
    for case in info.cases:
        shutil.copy(case.label, tmp_path / "pred" / f"{case.case_id}.nii.gz")
    df = evaluate(tmp_path / "pred", tmp_path / "data")
    assert list(df["case_id"]) == ["BraTS20_Training_001", "BraTS20_Training_002", "mean"]
    assert (df[["dice_TC", "dice_WT", "dice_ET"]] == 1.0).all().all()


@pytest.mark.parametrize("what", ["shape", "affine"])
def test_a_case_in_another_geometry_fails_alone_and_the_others_are_scored(tmp_path, capsys, what):
    for case in ("a", "b", "c"):
        save(tmp_path / "ref" / f"{case}.nii.gz", cube(4, (2, 2, 2)))
        if case != "b":
            save(tmp_path / "pred" / f"{case}.nii.gz", cube(4, (2, 2, 2)))
    if what == "shape":
        save(tmp_path / "pred" / "b.nii.gz", cube(4, (2, 2, 2), shape=(12, 12, 11)))
    else:
        save(tmp_path / "pred" / "b.nii.gz", cube(4, (2, 2, 2)), np.eye(4))
    csv = tmp_path / "m.csv"
    df = evaluate(tmp_path / "pred", tmp_path / "ref", output_csv=csv)
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"{tmp_path / 'pred' / 'b.nii.gz'}: geometry differs" in errors[0]
    assert what in errors[0]
    assert list(df["case_id"]) == ["a", "b", "c", "mean"] and list(df.columns)[-1] == "error"
    assert df.loc[[0, 2], "dice_WT"].tolist() == [1.0, 1.0]
    assert df.loc[1, ["dice_WT", "hd95_WT"]].isna().all()  # not scored as an empty prediction
    assert df.loc[3, "dice_WT"] == 1.0 and df.loc[3, "hd95_WT"] == 0.0  # mean of a and c
    assert list(df.attrs["failed"]) == ["b"] and df.attrs["failed"]["b"] == errors[0][7:]
    assert exit_status(df) == 1 and exit_status(pd.DataFrame({"case_id": ["a"]})) == 0
    written = pd.read_csv(csv)
    assert written["error"].notna().tolist() == [False, True, False, False]
    assert written.loc[1, "error"].startswith(str(tmp_path / "pred" / "b.nii.gz"))
    text = format_summary(df)
    assert text.startswith("2 cases") and "1 case(s) failed, not scored" in text
    assert text.splitlines()[-2].endswith(": b")
    from invseg.cli import main

    argv = ["evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref")]
    assert main([*argv, "-o", str(tmp_path / "cli.csv")]) == 1  # the CLI exits non-zero
    assert len(pd.read_csv(tmp_path / "cli.csv")) == 4


def test_every_case_failing_still_writes_the_table(tmp_path, capsys):
    save(tmp_path / "ref" / "a.nii.gz", cube(4, (2, 2, 2)))
    (tmp_path / "pred").mkdir()
    (tmp_path / "pred" / "a.nii.gz").write_bytes(b"not a nifti")
    df = evaluate(
        tmp_path / "pred", tmp_path / "ref", labels="brats", output_csv=tmp_path / "m.csv"
    )
    assert "a.nii.gz: unreadable image header" in df.attrs["failed"]["a"]
    assert capsys.readouterr().err.count("error: ") == 1
    assert list(pd.read_csv(tmp_path / "m.csv")["case_id"]) == ["a", "mean"]
    text = format_summary(df)
    assert text.startswith("0 cases (labels: brats)\n") and "Empty" not in text


def test_prediction_without_reference(tmp_path):
    save(tmp_path / "ref" / "a.nii.gz", cube(4, (2, 2, 2)))
    save(tmp_path / "pred" / "a.nii.gz", cube(4, (2, 2, 2)))
    save(tmp_path / "pred" / "b.nii.gz", cube(4, (2, 2, 2)))
    with pytest.raises(DataError, match="1 prediction.*no reference.*: b"):
        evaluate(tmp_path / "pred", tmp_path / "ref")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no prediction files"):
        evaluate(tmp_path / "empty", tmp_path / "ref")


def _three_of_five(tmp_path: Path) -> None:
    for k in range(5):
        save(tmp_path / "ref" / f"c{k}.nii.gz", cube(4, (2, 2, 2)))
        if k < 3:
            save(tmp_path / "pred" / f"c{k}.nii.gz", cube(4, (2, 2, 2)))


def test_missing_predictions_score_zero_under_brats_scoring(tmp_path, capsys):
    _three_of_five(tmp_path)
    df = evaluate(tmp_path / "pred", tmp_path / "ref")  # BraTS labels: BraTS scoring by default
    warning = capsys.readouterr().err
    assert "2 reference case(s) have no prediction" in warning and "c3, c4" in warning
    assert list(df["case_id"]) == ["c0", "c1", "c2", "c3", "c4", "mean"]
    assert df.attrs["scoring"] == "brats" and df.attrs["missing"] == ["c3", "c4"]
    for k in (3, 4):
        assert (df.loc[k, ["dice_TC", "dice_WT", "dice_ET"]] == 0.0).all()
        assert (df.loc[k, ["hd95_TC", "hd95_WT", "hd95_ET"]] == 373.13).all()
    assert df.loc[5, "dice_WT"] == pytest.approx(3 / 5)
    text = format_summary(df)
    assert text.startswith("5 cases") and "Dice 0 and HD95 373.13" in text
    assert "2 case(s) had no prediction: c3, c4" in text


def test_missing_predictions_are_left_out_with_a_warning_without_brats_scoring(tmp_path, capsys):
    _three_of_five(tmp_path)
    df = evaluate(tmp_path / "pred", tmp_path / "ref", scoring="none")
    assert "left out" in capsys.readouterr().err
    assert list(df["case_id"]) == ["c0", "c1", "c2", "mean"]
    assert "2 reference case(s) without a prediction left out: c3, c4" in format_summary(df)
    with pytest.raises(ValueError, match="unknown scoring 'brat'.*Did you mean 'brats'"):
        evaluate(tmp_path / "pred", tmp_path / "ref", scoring="brat")


def test_directed_distances_of_a_small_prediction_inside_a_large_reference(tmp_path):
    """MHD takes the larger directed mean, ASD pools both directions, HD95 the larger P95.

    Reference: a 9^3 WM cube (edge voxels at Chebyshev distance 4 from its centre);
    prediction: its centre voxel only. Prediction -> reference: every distance is 4 mm.
    Reference -> prediction: the distances from each edge voxel to the centre.
    """
    ref = np.zeros((13, 13, 13), np.uint8)
    ref[2:11, 2:11, 2:11] = 250
    pred = np.zeros_like(ref)
    pred[6, 6, 6] = 250
    save(tmp_path / "ref" / "subject-1.nii.gz", ref, np.eye(4))
    save(tmp_path / "pred" / "subject-1.nii.gz", pred, np.eye(4))
    row = evaluate(tmp_path / "pred", tmp_path / "ref", labels="iseg").iloc[0]
    offsets = np.stack(np.meshgrid(*[np.arange(-4, 5)] * 3, indexing="ij"), -1).reshape(-1, 3)
    edge = offsets[np.abs(offsets).max(axis=1) == 4]  # the 9^3 - 7^3 = 386 edge voxels
    d_gp = np.linalg.norm(edge, axis=1)
    assert len(d_gp) == 386 and d_gp.mean() > 5.0  # one-way means: 4.0 vs > 5
    assert row["dice_WM"] == pytest.approx(2 / (1 + 729))
    assert row["mhd_WM"] == pytest.approx(d_gp.mean(), abs=1e-4)  # max(4, mean), not min
    assert row["asd_WM"] == pytest.approx((4.0 + d_gp.sum()) / 387, abs=1e-4)  # both ways
    assert row["hd95_WM"] == pytest.approx(np.percentile(d_gp, 95), abs=1e-4)


def test_iseg_class_indices_get_an_iseg_hint(tmp_path):
    save(tmp_path / "ref" / "subject-1.nii.gz", cube(1, (1, 1, 1)) + cube(3, (6, 6, 6)))
    save(tmp_path / "pred" / "subject-1.nii.gz", cube(1, (1, 1, 1)))
    with pytest.raises(DataError, match=r"iSeg stores 10 \(CSF\), 150 \(GM\), 250 \(WM\)"):
        evaluate(tmp_path / "pred", tmp_path / "ref")
    save(tmp_path / "ref2" / "subject-1.nii.gz", cube(10, (1, 1, 1)))
    df = evaluate(tmp_path / "pred", tmp_path / "ref2")  # the prediction holds class indices
    problem = df.attrs["failed"]["subject-1"]
    assert problem.startswith(str(tmp_path / "pred" / "subject-1.nii.gz"))
    assert re.search("look like class indices.*10.*150.*250", problem)


def test_cli_flags(tmp_path, capsys):
    from invseg.cli import main

    _three_of_five(tmp_path)
    csv = tmp_path / "out" / "scores.csv"
    argv = ["evaluate", "-p", str(tmp_path / "pred"), "-r", str(tmp_path / "ref"), "-o", str(csv)]
    assert main([*argv, "--convention", "none", "--labels", "brats"]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("3 cases (labels: brats)") and "c3, c4" in out.err
    assert list(pd.read_csv(csv)["case_id"]) == ["c0", "c1", "c2", "mean"]
    assert main(argv) == 0
    assert "BraTS scoring" in capsys.readouterr().out
    assert list(pd.read_csv(csv)["case_id"]) == ["c0", "c1", "c2", "c3", "c4", "mean"]


def _copy_labels(info, folder: Path) -> None:
    """The reference labels as perfect predictions ``<case_id>.nii.gz`` (or ``.hdr``/``.img``)."""
    folder.mkdir()
    for case in info.cases:
        if case.label.suffix == ".hdr":
            for ext in (".hdr", ".img"):
                shutil.copy(case.label.with_suffix(ext), folder / f"{case.case_id}{ext}")
        else:
            shutil.copy(case.label, folder / f"{case.case_id}.nii.gz")


@pytest.mark.parametrize("missing", ["one modality", "every image"])
@pytest.mark.parametrize("layout", ["brats2020", "brats2023", "msd", "nnunet", "iseg"])
def test_reference_cases_need_only_their_label_files(tmp_path, layout, missing):
    kind, kw = ("iseg", {}) if layout == "iseg" else ("brats", {"layout": layout})
    info = synthesize(kind, tmp_path / "data", cases=3, shape=(16, 16, 16), **kw)
    _copy_labels(info, tmp_path / "pred")
    case = info.cases[1]
    for image in case.images[1:2] if missing == "one modality" else case.images:
        image.unlink()
        image.with_suffix(".img").unlink(missing_ok=True)
    df = evaluate(tmp_path / "pred", tmp_path / "data")
    assert list(df["case_id"]) == [*(c.case_id for c in info.cases), "mean"]
    assert "error" not in df and df.attrs["convention"] == info.convention.name
    assert (df[[c for c in df.columns if c.startswith("dice_")]] == 1.0).all().all()


def test_rerun_says_it_replaced_the_table_and_removes_its_killed_temporaries(tmp_path):
    _three_of_five(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    stale = out / ".scores.csv.ab12_xyz.tmp"
    others = [out / ".other.csv.ab12_xyz.tmp", out / ".scores.csv.tmp", out / "scores.csv.bak"]
    for p in [stale, *others]:
        p.write_text("half")
    df = evaluate(tmp_path / "pred", tmp_path / "ref", output_csv=out / "scores.csv")
    assert not stale.exists() and all(p.read_text() == "half" for p in others)
    assert format_summary(df).splitlines()[-1] == (
        f"metrics written to {out / 'scores.csv'} (removed 1 temporary file left by a killed run)"
    )
    df = evaluate(tmp_path / "pred", tmp_path / "ref", output_csv=out / "scores.csv")
    assert format_summary(df).endswith("scores.csv (replaced 1 earlier result)")
    assert "metrics written" not in format_summary(evaluate(tmp_path / "pred", tmp_path / "ref"))
