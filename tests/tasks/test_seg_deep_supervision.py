"""Training with deep supervision: the task sums MONAI's weighted loss over every level."""

from __future__ import annotations

import pandas as pd
import torch

from invseg.commands.train import train
from invseg.nets import PartiallyInvResUNet
from tests.conftest import tiny_config


def test_deep_supervision_adds_the_half_weighted_level_loss(brats_tiny, tmp_path) -> None:
    losses, runs = {}, {}
    for deep in (False, True):
        runs[deep] = train(
            tiny_config(brats_tiny.root, tmp_path / str(deep), steps=1),
            overrides=["model.channels=[4,8,16]", f"model.deep_supervision={str(deep).lower()}"],
        )
        losses[deep] = float(pd.read_csv(runs[deep] / "metrics.csv")["loss"].iloc[0])
    # same seeded weights and crops (the head is created last): the main loss is the same, and
    # the level-1 term, weighted 1/2, is a Dice + BCE loss of at least a few tenths
    assert 0.2 < losses[True] - losses[False] < 1.0, losses
    meta = torch.load(runs[True] / "last.pt", weights_only=True)
    assert meta["meta"]["kwargs"]["deep_supervision"] is True
    net = PartiallyInvResUNet(**meta["meta"]["kwargs"])
    net.load_state_dict(meta["model"])  # the checkpoint holds the head: it loads strictly
    assert isinstance(net.eval()(torch.zeros(1, 4, 16, 16, 16)), torch.Tensor)
