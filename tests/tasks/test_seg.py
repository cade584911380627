"""The segmentation task: loss values, validation in millimetres, data faults named."""

from __future__ import annotations

import multiprocessing
import re
import shutil
import threading
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch

from invseg.commands.train import train
from invseg.data import DataError, get_convention
from invseg.runtime.device import Amp
from invseg.runtime.distributed import DistInfo
from invseg.tasks.seg_data import validation_metrics
from invseg.tasks.seg_loss import dice_loss
from tests.conftest import tiny_config


def test_dice_loss_smoothing_is_zero_over_1e_minus_5() -> None:
    # p = sigmoid(0) = 0.5 everywhere on 8 voxels, y = 1 on 2 of them (squared_pred=True):
    # 1 - (2 * 0.5 * 2 + 0) / (8 * 0.25 + 2 + 1e-5)
    z, y = torch.zeros(1, 1, 2, 2, 2), torch.zeros(1, 1, 2, 2, 2)
    y[0, 0, 0, 0] = 1
    expected = 1 - 2.0 / (4.0 + 1e-5)
    assert float(dice_loss()(z, y)) == pytest.approx(expected, abs=1e-7)
    # an empty reference and empty prediction: (0 + 0) / (0 + 1e-5) -> loss 1, not 0
    assert float(dice_loss()(torch.full_like(z, -50.0), torch.zeros_like(y))) == pytest.approx(1)


class Shifted(torch.nn.Module):
    """Predicts the reference cube shifted by 2 voxels along the first axis."""

    def __init__(self, ref: torch.Tensor) -> None:
        super().__init__()
        self.logits = torch.where(torch.roll(ref, 2, dims=2) > 0, 20.0, -20.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], -1, -1, -1, -1)


@pytest.mark.parametrize("spacing", [1.0, 2.5])
def test_validation_hd95_is_in_millimetres(spacing: float) -> None:
    label = torch.zeros(1, 3, 16, 16, 16)
    label[:, :, 4:10, 4:10, 4:10] = 1
    data = SimpleNamespace(
        convention=get_convention("brats"),
        info=DistInfo(),
        spacing=[spacing] * 3,
        val_ds=[{"image": torch.zeros(4, 16, 16, 16), "label": label[0]}],
    )
    out = validation_metrics(
        Shifted(label),
        data,
        Amp(torch.device("cpu"), False),
        roi_size=[16] * 3,
        sw_batch_size=1,
        overlap=0.0,
    )
    assert out["hd95_WT"] == pytest.approx(2 * spacing)
    assert out["dice_WT"] == pytest.approx(2 * 4 / 12)


def _copy_with(brats_tiny, tmp_path, suffix: str, edit) -> Path:
    """A copy of ``brats_tiny`` whose ``<case>_<suffix>`` files are all edited."""
    root = tmp_path / "data"
    shutil.copytree(brats_tiny.root, root)
    for k in (1, 2, 3, 4):
        path = root / f"BraTS20_Training_00{k}" / f"BraTS20_Training_00{k}_{suffix}.nii.gz"
        img = nib.load(path)
        nib.save(nib.Nifti1Image(edit(np.asarray(img.dataobj)), img.affine), path)
    return root


def _unchecked(monkeypatch) -> None:
    """Skip SegData's up-front check, as if the files changed after it."""
    import invseg.data

    monkeypatch.setattr(invseg.data, "check_cases", lambda *args, **kwargs: None)


def _seg_data(root: Path, tmp_path: Path, *overrides: str):
    from invseg.tasks.config import load_config
    from invseg.tasks.seg import split_cases
    from invseg.tasks.seg_data import SegData

    sets = ["data.val_cases=[BraTS20_Training_004]", *overrides]
    return SegData(load_config(tiny_config(root, tmp_path / "run"), sets), DistInfo(), split_cases)


def _nan_voxels(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float32)
    a[10, 11, 12] = np.nan
    return a


def test_nan_voxel_found_in_training_names_the_modality_file(
    brats_tiny, tmp_path, monkeypatch
) -> None:
    root = _copy_with(brats_tiny, tmp_path, "flair", _nan_voxels)
    _unchecked(monkeypatch)
    with pytest.raises(DataError) as err:
        train(tiny_config(root, tmp_path / "run", steps=1))
    text = str(err.value)
    assert re.fullmatch(
        rf"{re.escape(str(root))}/BraTS20_Training_00(\d)/BraTS20_Training_00\1_flair\.nii\.gz: "
        r"non-finite \(NaN/Inf\) voxel in the training input; fix or remove that case\.",
        text,
    ), text


def test_nan_voxel_is_found_before_training_starts(brats_tiny, tmp_path) -> None:
    root = _copy_with(brats_tiny, tmp_path, "flair", _nan_voxels)
    with pytest.raises(DataError, match=r"BraTS20_Training_001_flair\.nii\.gz: contains 1 NaN"):
        train(tiny_config(root, tmp_path / "run", steps=1))
    assert not (tmp_path / "run").exists()


def _shorter(a: np.ndarray) -> np.ndarray:
    return a[:, :, :30]


def test_cache_threads_are_joined_when_filling_the_cache_fails(
    brats_tiny, tmp_path, monkeypatch
) -> None:
    # MONAI's ThreadPool goes on loading the next case after one failed; a thread still in
    # torch code at interpreter exit aborted the process (status 134).
    root = _copy_with(brats_tiny, tmp_path, "flair", _shorter)
    _unchecked(monkeypatch)
    before = set(threading.enumerate())
    with pytest.raises(RuntimeError, match="LoadImaged"):
        _seg_data(root, tmp_path, "data.cache_rate=1.0")
    assert [t.name for t in threading.enumerate() if t not in before] == []


def test_loader_workers_stop_when_a_batch_fails(brats_tiny, tmp_path, monkeypatch) -> None:
    root = _copy_with(brats_tiny, tmp_path, "flair", _shorter)
    _unchecked(monkeypatch)
    data = _seg_data(root, tmp_path)
    before = set(multiprocessing.active_children())
    with pytest.raises(RuntimeError, match="DataLoader worker process 0"):
        for _ in data.loader(0, num_workers=1):
            pass
    assert [p for p in multiprocessing.active_children() if p not in before] == []


def test_roi_size_auto_is_the_crop_on_cpu(brats_tiny, tmp_path) -> None:
    cfg = tiny_config(brats_tiny.root, tmp_path / "run", steps=1)
    cfg["data"]["crop"] = [16, 24, 16]
    cfg["infer"]["roi_size"] = "auto"
    run = train(cfg)
    meta = torch.load(run / "last.pt", weights_only=True)["meta"]
    assert meta["roi_size"] == [16, 24, 16]


def test_crop_auto_plans_the_largest_cube_within_the_memory_budget(tmp_path) -> None:
    from invseg.runtime.config import ConfigError
    from invseg.tasks.config import load_config
    from invseg.tasks.seg_data import plan_crop

    cfg = load_config(tiny_config(tmp_path, tmp_path / "o"), ["data.crop=auto"])
    with pytest.raises(ConfigError, match="needs train.memory_budget"):
        plan_crop(cfg, DistInfo(), 4)
    small = plan_crop(load_config(cfg.to_dict(), ["train.memory_budget=20MB"]), DistInfo(), 4)
    large = plan_crop(load_config(cfg.to_dict(), ["train.memory_budget=200MB"]), DistInfo(), 4)
    assert small[0] % 8 == 0 and small == [small[0]] * 3 and large[0] > small[0]
    with pytest.raises(ConfigError, match="too small"):
        plan_crop(load_config(cfg.to_dict(), ["train.memory_budget=1KB"]), DistInfo(), 4)


def test_crop_auto_is_capped_at_the_volume_and_trains(brats_tiny, tmp_path) -> None:
    cfg = tiny_config(brats_tiny.root, tmp_path / "run", steps=1)
    cfg["data"]["crop"] = "auto"
    cfg["train"]["memory_budget"] = "200MB"
    run = train(cfg)
    meta = torch.load(run / "last.pt", weights_only=True)["meta"]
    assert meta["crop"] == [32, 32, 32]  # the plan (112^3) capped at the 32^3 volumes
