"""The UNet3D twin as a first-class model: its packaged configs, and training it in both modes."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

import invseg.nets.unet3d as unet3d_module
from invseg.cli import main
from invseg.commands.train import train
from invseg.nets import UNet3D
from invseg.runtime.checkpoint import load_checkpoint
from invseg.runtime.config import instantiate_model, list_configs
from invseg.tasks.config import load_config

TWINS = [("brats_unet3d", "brats_partially_invres"), ("iseg_unet3d", "iseg_partially_invres")]


@pytest.mark.parametrize(("name", "partially"), TWINS)
def test_unet3d_config_is_the_partially_config_with_the_twin_in_store_mode(name, partially):
    cfg, ref = load_config(name), load_config(partially)
    assert cfg.model == {**ref.model, "_target_": "invseg.nets.UNet3D", "memory": "store"}
    for section in ("data", "train", "infer"):
        assert getattr(cfg, section) == getattr(ref, section), section
    assert cfg.output.dir == f"runs/{name}"
    assert list_configs()[name].startswith("UNet3D (residual, non-invertible) on ")
    net = instantiate_model(cfg.model)
    assert type(net) is UNet3D and net.memory == "store"
    assert net.channels == tuple(ref.model["channels"]) and net.blocks == (1, 1, 1, 1)


def _tiny(root: Path) -> list[str]:
    """Overrides that shrink a packaged BraTS config to a 2-step run on 32^3 volumes."""
    return [
        f"data.root={root}",
        "data.crop=[32, 32, 32]",
        "data.val_fraction=0.25",
        "model.channels=[4, 8]",
        "model.norm=[group, {num_groups: 2}]",
        "train.steps=2",
        "train.lr=1.0e-2",
        "train.num_workers=0",
        "train.amp=false",
        "train.progress=false",
        "train.measure_memory=false",
        "train.device=cpu",
        "infer.roi_size=[32, 32, 32]",
        "infer.sw_batch_size=1",
        "infer.overlap=0.25",
    ]


def test_brats_unet3d_trains_in_checkpoint_mode_like_the_store_twin(
    brats_tiny, tmp_path, monkeypatch
) -> None:
    # the partially config with its target swapped: `memory: invert` means store for UNet3D
    store_run = tmp_path / "store"
    args = ["train", "brats_partially_invres", "-o", str(store_run)]
    args += ["--set", "model._target_=invseg.nets.UNet3D"]
    for override in _tiny(brats_tiny.root):
        args += ["--set", override]
    assert main(args) == 0

    calls = []

    def counting(fn, *args, **kwargs):
        calls.append(kwargs)
        return torch.utils.checkpoint.checkpoint(fn, *args, **kwargs)

    monkeypatch.setattr(unet3d_module, "checkpoint", counting)
    overrides = [*_tiny(brats_tiny.root), "model.memory=checkpoint"]
    ckpt_run = train("brats_unet3d", overrides=overrides, output=tmp_path / "ckpt")
    # 2 training steps x 3 levels (encoder stage, bottom, decoder step); validation in eval
    assert calls == [{"use_reentrant": False}] * 6

    store, ckpt = (load_checkpoint(run / "last.pt") for run in (store_run, ckpt_run))
    assert ckpt["step"] == store["step"] == 2
    assert ckpt["meta"]["target"] == store["meta"]["target"] == "invseg.nets.UNet3D"
    assert ckpt["meta"]["kwargs"]["memory"] == "checkpoint"
    assert store["model"].keys() == ckpt["model"].keys()
    for key, value in store["model"].items():
        torch.testing.assert_close(ckpt["model"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    losses = [pd.read_csv(run / "metrics.csv")["loss"].tolist() for run in (store_run, ckpt_run)]
    assert len(losses[0]) == 2 and losses[0][1] != losses[0][0]  # the weights did move
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
