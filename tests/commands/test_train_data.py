"""`invseg train` on broken data: one line naming the file, exit status 2, no run folder.

Every training and validation case is checked before the first step (and before the run folder
exists), so each broken dataset below stops at once, whichever case is broken.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from invseg.cli import main
from tests.conftest import tiny_config

REPO = Path(__file__).resolve().parents[2]
CASE = "BraTS20_Training_003"


def _file(root: Path, suffix: str) -> Path:
    return root / CASE / f"{CASE}_{suffix}.nii.gz"


def _rewrite(path: Path, edit: Callable[[np.ndarray], np.ndarray]) -> None:
    img = nib.load(path)
    nib.save(nib.Nifti1Image(edit(np.asarray(img.dataobj)), img.affine), path)


def _truncate(root: Path) -> Path:
    path = _file(root, "t1ce")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return path


def _garbage(root: Path) -> Path:
    path = _file(root, "t2")
    path.write_bytes(np.random.default_rng(0).bytes(4000))
    return path


def _two_d(root: Path) -> Path:
    path = _file(root, "t1")
    _rewrite(path, lambda a: a[:, :, 16])
    return path


def _mismatched(root: Path) -> Path:
    path = _file(root, "flair")
    _rewrite(path, lambda a: a[:, :, :30])
    return path


def _bad_labels(root: Path) -> Path:
    path = _file(root, "seg")

    def paint(a: np.ndarray) -> np.ndarray:
        a = a.copy()
        a[0, 0, 0] = 3  # BraTS 2020 stores 0/1/2/4
        return a

    _rewrite(path, paint)
    return path


def _nan_flair(root: Path) -> Path:
    path = _file(root, "flair")

    def poke(a: np.ndarray) -> np.ndarray:
        a = a.astype(np.float32)
        a[10, 11, 12] = a[20, 5, 7] = np.nan
        return a

    _rewrite(path, poke)
    return path


BROKEN = {
    "truncated": (_truncate, "corrupt or truncated image data"),
    "garbage": (_garbage, "unreadable image header"),
    "2d": (_two_d, "has shape (32, 32); expected a 3-D volume"),
    "mismatched": (_mismatched, f"shape (32, 32, 30) differs from {CASE}_t1.nii.gz (32, 32, 32)"),
    "labels": (_bad_labels, "label values [3] are not part of the 'brats' convention"),
    "nan_flair": (_nan_flair, "contains 2 NaN voxels"),
}


def _dataset(brats_tiny, tmp_path: Path, breaker: Callable[[Path], Path]) -> tuple[Path, Path]:
    root = tmp_path / "data"
    shutil.copytree(brats_tiny.root, root)
    return root, breaker(root)


def _config(tmp_path: Path) -> Path:
    cfg = tiny_config(tmp_path / "unused", tmp_path / "unused_run", steps=1)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("val_cases", [None, [CASE]], ids=["train_case", "val_case"])
@pytest.mark.parametrize("kind", list(BROKEN))
def test_broken_data_stops_before_the_run_folder_exists(
    brats_tiny, tmp_path, capsys, kind, val_cases
) -> None:
    breaker, problem = BROKEN[kind]
    root, broken = _dataset(brats_tiny, tmp_path, breaker)
    run = tmp_path / "runs" / "run"
    args = ["train", str(_config(tmp_path)), "--set", f"data.root={root}", "-o", str(run)]
    if val_cases:
        args += ["--set", f"data.val_cases={val_cases}"]
    status = main(args)
    out, err = capsys.readouterr()
    assert status == 2
    assert err.startswith(f"invseg: error: {broken}: {problem}")
    assert err.count("\n") == 1 and err.endswith("\n")  # one line
    assert out == ""  # the loop never started: no model summary
    assert not run.exists() and not run.parent.exists()


def test_nan_voxel_is_reported_in_the_flair_file_not_the_first_modality(
    brats_tiny, tmp_path, capsys
) -> None:
    root, flair = _dataset(brats_tiny, tmp_path, _nan_flair)
    status = main(["train", str(_config(tmp_path)), "--set", f"data.root={root}"])
    err = capsys.readouterr().err
    assert status == 2
    assert f"{flair}: contains 2 NaN voxels" in err
    assert "_t1" not in err


SCRIPT = "import sys; from invseg.cli import main; sys.exit(main(sys.argv[1:]))"


@pytest.mark.slow
def test_mismatched_shapes_exit_with_status_2_every_time(brats_tiny, tmp_path) -> None:
    # Training on broken data used to abort at interpreter exit now and then ("terminate called
    # without an active exception", status 134): MONAI's cache thread was still loading.
    root, broken = _dataset(brats_tiny, tmp_path, _mismatched)
    config = _config(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    run = tmp_path / "run"
    sets = [f"data.root={root}", "data.cache_rate=1.0", "train.num_workers=1"]
    args = ["train", str(config), "-o", str(run), *(a for s in sets for a in ("--set", s))]
    statuses, errors = [], []
    for _ in range(3):
        result = subprocess.run(
            [sys.executable, "-c", SCRIPT, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        statuses.append(result.returncode)
        errors.append(result.stderr)
    assert statuses == [2, 2, 2], errors
    assert all(e.startswith(f"invseg: error: {broken}: shape (32, 32, 30)") for e in errors)
    assert all("terminate called" not in e for e in errors)
    assert not run.exists()
