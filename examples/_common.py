"""Helpers shared by the example scripts (not part of the invseg API)."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

#: The repository root (the examples read configs/ from it).
REPO = Path(__file__).resolve().parents[1]

#: Overrides that make a segmentation run tiny: 32^3 crops, (4, 8) channels, 2 steps on a CPU.
QUICK_OVERRIDES = [
    "data.crop=[32,32,32]",
    "data.num_samples=1",
    "data.cache_rate=0.0",
    "model.channels=[4,8]",
    "model.norm=[group,{num_groups: 2}]",
    "train.steps=2",
    "train.batch_size=1",
    "train.num_workers=0",
    "train.amp=false",
    "train.progress=false",
    "train.device=cpu",
    "infer.roi_size=[32,32,32]",
]


def quick_from_argv() -> bool:
    """``--quick`` on the command line or ``INVSEG_QUICK=1`` in the environment."""
    return "--quick" in sys.argv or os.environ.get("INVSEG_QUICK", "") not in ("", "0")


def work_dir(tmp_dir: str | Path | None, name: str) -> Path:
    """``tmp_dir`` (created) or a fresh temporary folder."""
    path = Path(tmp_dir) if tmp_dir is not None else Path(tempfile.mkdtemp(prefix=f"{name}_"))
    path.mkdir(parents=True, exist_ok=True)
    return path
