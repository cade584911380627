"""Tutorial: predict NIfTI label maps in the input's own geometry, then score them.

``predict`` takes case folders, dataset folders or image files and writes one
``<case_id>.nii.gz`` per case with the input's shape, affine and orientation and the dataset's own
label values (BraTS: 0, 1, 2, 4). Here the input is stored in LPS orientation at 1.2 mm to show
that the output follows the input, not the network's RAS 1 mm working grid.

Run it::

    python examples/predict_nifti.py --quick

The same on the command line::

    invseg predict -m RUN/best.pt -i DATA -o PRED
    invseg evaluate --pred PRED --ref DATA
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from invseg.commands.evaluate import evaluate
from invseg.commands.predict import predict
from invseg.commands.train import train
from invseg.data import synthesize

try:
    from examples._common import QUICK_OVERRIDES, REPO, quick_from_argv, work_dir
except ImportError:  # run as a script
    from _common import QUICK_OVERRIDES, REPO, quick_from_argv, work_dir


def main(tmp_dir: str | Path | None = None, quick: bool = False) -> dict[str, Any]:
    """Train briefly, predict an LPS dataset, check its geometry and return the Dice table."""
    work = work_dir(tmp_dir, "predict_nifti")
    shape = (32, 32, 32) if quick else (64, 64, 64)
    train_data = synthesize("brats", work / "train_data", cases=2, shape=shape)
    overrides = [f"data.root={train_data.root}", f"output.dir={work / 'run'}"]
    overrides += QUICK_OVERRIDES if quick else ["train.steps=100", "data.crop=[64,64,64]"]
    overrides += ["data.val_fraction=0.5"]
    run = train(REPO / "configs" / "brats_partially_invres.yaml", overrides=overrides)

    # new cases, stored LPS at 1.2 mm: the prediction must come back in exactly that geometry
    test = synthesize(
        "brats",
        work / "test_data",
        cases=2,
        shape=shape,
        seed=7,
        orientation="LPS",
        spacing=(1.2, 1.2, 1.2),
    )
    out = work / "predictions"
    failed = predict(run / "best.pt", [test.root], out, device="cpu")
    for case in test.cases:
        image, pred = nib.load(case.images[0]), nib.load(out / f"{case.case_id}.nii.gz")
        assert pred.shape == image.shape and np.allclose(pred.affine, image.affine, atol=1e-5)
        values = sorted(np.unique(np.asarray(pred.dataobj)).tolist())
        print(
            f"{case.case_id}: shape {pred.shape}, axes {nib.aff2axcodes(pred.affine)}, "
            f"labels {values}"
        )
    table = evaluate(out, test.root)
    print(table[["case_id", "dice_TC", "dice_WT", "dice_ET"]].to_string(index=False))
    return {"failed": failed, "predictions": out, "table": table}


if __name__ == "__main__":
    main(quick=quick_from_argv())
