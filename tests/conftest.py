"""Shared fixtures: tiny synthetic datasets, tiny segmentation configs and a trained checkpoint."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

# pytest-xdist runs one worker per core; one intra-op thread each avoids oversubscribing them.
torch.set_num_threads(1)


def tiny_config(root: Path, out: Path, **train: Any) -> dict[str, Any]:
    """A 32^3, (4, 8)-channel PartiallyInvResUNet config that trains in seconds on a CPU."""
    cfg: dict[str, Any] = {
        "data": {
            "root": str(root),
            "convention": "brats",
            "crop": [32, 32, 32],
            "val_cases": None,
            "val_fraction": 0.25,
        },
        "model": {
            "_target_": "invseg.nets.PartiallyInvResUNet",
            "in_channels": 4,
            "out_channels": 3,
            "channels": [4, 8],
            "norm": ["group", {"num_groups": 2}],
        },
        "train": {
            "steps": 2,
            "batch_size": 1,
            "lr": 1.0e-2,
            "num_workers": 0,
            "amp": False,
            "progress": False,
            "measure_memory": False,
            "seed": 0,
            "warmup_steps": 0,
        },
        "infer": {"roi_size": [32, 32, 32], "sw_batch_size": 1, "overlap": 0.25},
        "output": {"dir": str(out)},
    }
    cfg["train"].update(train)
    return copy.deepcopy(cfg)


@pytest.fixture(scope="session")
def brats_tiny(tmp_path_factory: pytest.TempPathFactory):
    """A 4-case BraTS 2020 dataset of 32^3 volumes (DatasetInfo)."""
    from invseg.data import synthesize

    return synthesize(
        "brats", tmp_path_factory.mktemp("brats_tiny"), cases=4, shape=(32, 32, 32), seed=0
    )


@pytest.fixture(scope="session")
def trained_run(brats_tiny, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run folder of a 2-step training on ``brats_tiny`` (with best.pt and last.pt)."""
    from invseg.commands.train import train

    out = tmp_path_factory.mktemp("run") / "run"
    return train(tiny_config(brats_tiny.root, out, measure_memory=True))
