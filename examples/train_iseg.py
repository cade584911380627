"""Tutorial: train on iSeg (infant brain tissue: CSF, GM, WM from T1 and T2).

iSeg ships Analyze 7.5 pairs ``subject-N-{T1,T2,label}.hdr/.img`` with labels 0, 10, 150, 250.
invseg reads them with MONAI's ``NibabelReader``, trains a 4-class softmax network (Dice +
cross-entropy) and writes predictions back with the values 0/10/150/250.

Run it::

    python examples/train_iseg.py --quick

The same run on the command line::

    invseg train configs/iseg_partially_invres.yaml --set data.root=DATA --set output.dir=RUN
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from invseg.commands.train import train
from invseg.data import synthesize

try:
    from examples._common import QUICK_OVERRIDES, REPO, quick_from_argv, work_dir
except ImportError:  # run as a script
    from _common import QUICK_OVERRIDES, REPO, quick_from_argv, work_dir


def main(tmp_dir: str | Path | None = None, quick: bool = False) -> dict[str, Any]:
    """Synthesise iSeg subjects, train, and return the last validation Dice per tissue."""
    work = work_dir(tmp_dir, "train_iseg")
    cases, shape = (3, (32, 32, 32)) if quick else (6, (64, 64, 64))
    info = synthesize("iseg", work / "data", cases=cases, shape=shape)
    print(f"{len(info.cases)} subjects, modalities {info.modalities}")
    print("files:", ", ".join(p.name for p in sorted((work / "data").iterdir())[:3]), "...")

    overrides = [f"data.root={info.root}", f"output.dir={work / 'run'}"]
    if quick:
        overrides += QUICK_OVERRIDES
    else:
        overrides += ["data.crop=[64,64,64]", "infer.roi_size=[64,64,64]", "train.steps=200"]
    run = train(REPO / "configs" / "iseg_partially_invres.yaml", overrides=overrides)

    metrics = pd.read_csv(run / "metrics.csv")
    last = metrics.dropna(subset=["dice_mean"]).iloc[-1]
    dice = {t: float(last[f"dice_{t}"]) for t in ("CSF", "GM", "WM")}
    print("validation Dice: " + ", ".join(f"{k} {v:.3f}" for k, v in dice.items()))
    return {"run": run, "dice": dice}


if __name__ == "__main__":
    main(quick=quick_from_argv())
