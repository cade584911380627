"""Prediction workflow: geometry round trip, per-case failures, no overwritten inputs."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from invseg.commands.predict import predict


def _case_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir())


def test_predict_writes_native_labels_for_a_dataset(trained_run: Path, brats_tiny, tmp_path):
    out = tmp_path / "pred"
    failures = predict(
        trained_run / "best.pt", [brats_tiny.root], out, save_probabilities=True, tta=True
    )
    assert failures == 0
    for case in brats_tiny.cases:
        img = nib.load(out / f"{case.case_id}.nii.gz")
        ref = nib.load(case.images[0])
        assert img.get_data_dtype() == np.uint8
        assert img.shape == ref.shape
        np.testing.assert_allclose(img.affine, ref.affine, atol=1e-5)
        assert set(np.unique(np.asarray(img.dataobj))) <= {0, 1, 2, 4}
        probs = nib.load(out / "probabilities" / f"{case.case_id}.nii.gz")
        assert probs.shape == (*ref.shape, 3)
        p = np.asarray(probs.dataobj)
        assert p.min() >= 0.0 and p.max() <= 1.0
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]


@pytest.mark.slow
def test_non_ras_anisotropic_odd_input_round_trips_geometry(trained_run: Path, tmp_path):
    from invseg.data import synthesize

    shape, spacing = (35, 33, 31), (1.2, 0.9, 1.5)
    ras = synthesize("brats", tmp_path / "ras", cases=1, shape=shape, spacing=spacing, seed=5)
    lps = synthesize(
        "brats", tmp_path / "lps", cases=1, shape=shape, spacing=spacing, seed=5, orientation="LPS"
    )
    outs = {}
    for name, info in (("ras", ras), ("lps", lps)):
        assert predict(trained_run / "last.pt", [info.root], tmp_path / f"out_{name}") == 0
        case = info.cases[0]
        ref = nib.load(case.images[0])
        got = nib.load(tmp_path / f"out_{name}" / f"{case.case_id}.nii.gz")
        assert got.shape == ref.shape
        np.testing.assert_allclose(got.affine, ref.affine, atol=1e-5)
        assert nib.aff2axcodes(got.affine) == nib.aff2axcodes(ref.affine)
        outs[name] = nib.as_closest_canonical(got)
    # same anatomy stored in two orientations -> the same labels in world space
    assert nib.aff2axcodes(nib.load(lps.cases[0].images[0]).affine) == ("L", "P", "S")
    np.testing.assert_allclose(outs["ras"].affine, outs["lps"].affine, atol=1e-4)
    a, b = np.asarray(outs["ras"].dataobj), np.asarray(outs["lps"].dataobj)
    assert (a == b).mean() > 0.99


def _break(case_dir: Path, how: str, tmp_path: Path) -> Path:
    files = sorted(case_dir.glob("*.nii.gz"))
    images = [f for f in files if not f.name.endswith("_seg.nii.gz")]
    target = images[1]
    if how == "corrupt":
        data = target.read_bytes()
        target.write_bytes(data[: len(data) // 2])
    elif how == "missing":
        target.unlink()
    elif how == "shape":
        img = nib.load(target)
        nib.save(nib.Nifti1Image(np.zeros((30, 32, 32), np.float32), img.affine), target)
    elif how == "nan":
        img = nib.load(target)
        arr = np.asarray(img.dataobj, dtype=np.float32)
        arr[3, 3, 3] = np.nan
        nib.save(nib.Nifti1Image(arr, img.affine), target)
    elif how == "channels":  # one 4-D file with 2 channels instead of 4 modalities
        img = nib.load(images[0])
        arr = np.stack([np.asarray(img.dataobj, dtype=np.float32)] * 2, axis=-1)
        path = tmp_path / "twochannel.nii.gz"
        nib.save(nib.Nifti1Image(arr, img.affine), path)
        return path
    return case_dir


def _copy_case(src: Path, case_id: str, dest: Path) -> Path:
    out = dest / case_id
    out.mkdir(parents=True)
    for f in src.iterdir():
        shutil.copyfile(f, out / f.name.replace(src.name, case_id))
    return out


@pytest.mark.slow
def test_each_bad_case_fails_alone_and_leaves_no_file(trained_run, brats_tiny, tmp_path, capsys):
    good = _case_dirs(brats_tiny.root)[0]
    kinds = ["corrupt", "missing", "shape", "nan", "channels"]
    inputs = [good]
    for k, how in enumerate(kinds):
        case_dir = _copy_case(good, f"BraTS20_Training_{101 + k}", tmp_path / "data")
        inputs.append(_break(case_dir, how, tmp_path))
    out = tmp_path / "pred"
    failures = predict(trained_run / "last.pt", inputs, out)
    err = [line for line in capsys.readouterr().err.splitlines() if "error: " in line]
    assert failures == len(kinds) == len(err)
    for k, how in enumerate(kinds[:-1]):
        assert sum(f"BraTS20_Training_{101 + k}" in line for line in err) == 1, how
    assert any("twochannel" in line and "channel" in line for line in err)
    assert sorted(p.name for p in out.iterdir()) == [f"{good.name}.nii.gz"]


def test_output_folder_holding_inputs_is_refused(trained_run, brats_tiny, tmp_path):
    case_dir = _case_dirs(brats_tiny.root)[0]
    with pytest.raises(ValueError, match="holds input images"):
        predict(trained_run / "last.pt", [case_dir], case_dir)


def test_unknown_device_gets_did_you_mean(trained_run, brats_tiny, tmp_path):
    with pytest.raises(ValueError, match="Did you mean 'cpu'"):
        predict(trained_run / "last.pt", [brats_tiny.root], tmp_path / "o", device="cpux")


def test_not_a_checkpoint_is_a_clear_error(brats_tiny, tmp_path):
    bogus = tmp_path / "model.pt"
    with gzip.open(bogus, "wb") as f:
        f.write(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable invseg checkpoint"):
        predict(bogus, [brats_tiny.root], tmp_path / "o")
