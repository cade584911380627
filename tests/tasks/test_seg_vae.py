"""Training with a VAE branch: the net returns its VAE loss and the task adds it, weighted."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from invseg.commands.train import train
from invseg.runtime.distributed import DistInfo
from invseg.tasks.config import load_config
from invseg.tasks.seg_data import plan_crop
from tests.conftest import tiny_config


def test_vae_training_loss_adds_the_weighted_vae_loss(brats_tiny, tmp_path) -> None:
    # model.input_image_size is left unset: the fixed 32^3 training crop gives it
    losses, runs = {}, {}
    for weight in (0, 1, 2):
        runs[weight] = train(
            tiny_config(brats_tiny.root, tmp_path / f"w{weight}", steps=1),
            overrides=["model.vae=true", f"train.loss.vae={weight}"],
        )
        losses[weight] = float(pd.read_csv(runs[weight] / "metrics.csv")["loss"].iloc[0])
    assert all(math.isfinite(v) for v in losses.values()), losses
    vae = losses[1] - losses[0]  # same weights, data and VAE noise: only the VAE term differs
    assert vae > 1e-3, losses
    assert losses[2] - losses[1] == pytest.approx(vae, rel=1e-4), losses
    meta = torch.load(runs[1] / "last.pt", weights_only=True)["meta"]
    assert meta["kwargs"]["vae"] is True
    assert meta["kwargs"]["input_image_size"] == [32, 32, 32]


def test_crop_auto_plans_a_vae_net_built_for_each_size(tmp_path) -> None:
    base = tiny_config(tmp_path, tmp_path / "o")
    sets = ["data.crop=auto", "train.memory_budget=200MB"]
    plain = plan_crop(load_config(base, sets), DistInfo(), 4)
    vae = plan_crop(load_config(base, [*sets, "model.vae=true"]), DistInfo(), 4)
    assert vae[0] % 8 == 0 and vae == [vae[0]] * 3
    assert 8 <= vae[0] < plain[0]  # the VAE branch's dense layers grow with the crop
