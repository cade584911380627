"""Tutorial: train a Partially-InvRes U-Net on BraTS and read the per-region Dice.

The dataset is a synthetic one in the real BraTS 2020 layout
(``BraTS20_Training_001/BraTS20_Training_001_{t1,t1ce,t2,flair,seg}.nii.gz``); point
``data.root`` at the folder the challenge ships instead and nothing else changes.

Run it::

    python examples/train_brats.py --quick   # seconds: 32^3 volumes, 2 steps
    python examples/train_brats.py           # minutes: 64^3 volumes, 200 steps

The same run on the command line::

    invseg train configs/brats_partially_invres.yaml --set data.root=DATA --set output.dir=RUN
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from invseg.commands.train import train
from invseg.data import synthesize

try:
    from examples._common import QUICK_OVERRIDES, REPO, quick_from_argv, work_dir
except ImportError:  # run as a script: examples/ is on sys.path
    from _common import QUICK_OVERRIDES, REPO, quick_from_argv, work_dir


def main(tmp_dir: str | Path | None = None, quick: bool = False) -> dict[str, Any]:
    """Synthesise BraTS cases, train, and return the last validation Dice per region."""
    work = work_dir(tmp_dir, "train_brats")
    cases, shape = (3, (32, 32, 32)) if quick else (8, (64, 64, 64))
    info = synthesize("brats", work / "data", cases=cases, shape=shape)
    print(f"{len(info.cases)} cases, layout {info.layout}, modalities {info.modalities}")

    overrides = [f"data.root={info.root}", f"output.dir={work / 'run'}"]
    if quick:
        overrides += QUICK_OVERRIDES
    else:
        overrides += [
            "data.crop=[64,64,64]",
            "infer.roi_size=[64,64,64]",
            "model.channels=[8,16,32]",
            "train.steps=200",
            "train.lr=3e-3",
            "train.val_every_steps=60",
        ]
    run = train(REPO / "configs" / "brats_partially_invres.yaml", overrides=overrides)

    metrics = pd.read_csv(run / "metrics.csv")
    last = metrics.dropna(subset=["dice_mean"]).iloc[-1]
    dice = {r: float(last[f"dice_{r}"]) for r in ("TC", "WT", "ET")}
    print(f"run folder: {run}  ({', '.join(sorted(p.name for p in run.iterdir()))})")
    print("validation Dice: " + ", ".join(f"{k} {v:.3f}" for k, v in dice.items()))
    return {"run": run, "dice": dice, "steps": int(metrics["step"].max())}


if __name__ == "__main__":
    main(quick=quick_from_argv())
