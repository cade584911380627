"""``invseg demo``: synthesise, train, predict and evaluate a brain-tumour segmenter in minutes.

Everything runs offline on 2 CPU cores: a BraTS-2020-format dataset is generated
(:func:`invseg.data.synthesize`, the ``hard`` preset: irregular, sometimes multifocal lesions
whose contrasts overlap normal tissue, so the Dice is not saturated), a small Partially-InvRes
U-Net is trained for a few minutes (the packaged ``demo`` config, ``invseg config show demo``),
the held-out cases are predicted back into their own geometry and label values with the last
checkpoint (``best.pt`` was chosen on these same cases, so its score would flatter), and a Dice
table plus an overlay PNG are written.

Folder written (``output``)::

    data/          the synthetic dataset (BraTS20_Training_NNN/...)
    run/           the training run (last.pt, best.pt, metrics.csv, curves.png, tb/)
    predictions/   <case_id>.nii.gz for the held-out cases
    labels/        the held-out reference labels, named like the predictions
    dice.csv       per-case, per-region Dice
    overlay.png    FLAIR slice with label (green) and prediction (red) outlines
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["DEMO_CONFIG_NAME", "DEMO_PRESET", "demo"]

#: The demo's training config: the packaged ``demo`` config (``invseg config show demo``).
DEMO_CONFIG_NAME = "demo"

#: Volume shape of the synthetic cases.
DEMO_SHAPE = (48, 48, 48)

#: Synthetic preset of the demo data (:data:`invseg.data.synth.PRESETS`).
DEMO_PRESET = "hard"


def _dice_table(pred_dir: Path, ref_dir: Path, csv: Path, labels: str) -> tuple[Any, str]:
    from invseg.commands.evaluate import evaluate, format_summary

    # labels given: held-out cases without enhancing tumour (no label 4) are ambiguous otherwise
    df = evaluate(pred_dir, ref_dir, labels=labels, output_csv=csv)
    return df, format_summary(df)


def _mean_dice(df: Any) -> dict[str, float]:
    """Mean Dice per region from an :func:`~invseg.commands.evaluate.evaluate` table."""
    rows = df[df["case_id"] == "mean"] if "case_id" in df.columns else df.iloc[0:0]
    cols = [c for c in df.columns if str(c).startswith("dice_")]
    if len(rows):
        return {c[5:]: float(rows.iloc[0][c]) for c in cols}
    return {c[5:]: float(df[c].mean()) for c in cols}


def _overlay(case: Any, modalities: Any, pred_dir: Path, path: Path) -> Path:
    """FLAIR slice of ``case`` with label (green) and prediction (red) outlines."""
    import nibabel as nib

    from invseg.data import cases_from_paths
    from invseg.runtime.plots import plot_overlay

    _, found = cases_from_paths([Path(case.images[0]).parent])
    images = found[0].images
    names = [m.lower() for m in modalities]
    k = names.index("flair") if "flair" in names else 0
    image = np.asarray(nib.load(str(images[k])).dataobj, dtype=np.float32)
    label = np.asarray(nib.load(str(case.label)).dataobj)
    pred = np.asarray(nib.load(str(pred_dir / f"{case.case_id}.nii.gz")).dataobj)
    return plot_overlay(
        image,
        path,
        label=label,
        prediction=pred,
        title=f"{case.case_id}: label (green) vs prediction (red)",
    )


def _train(out: Path, held: list[str], minutes: float, seed: int) -> Path:
    """Train the demo config on ``out/data`` (validating on ``held``) into a fresh ``out/run``."""
    from invseg.commands.train import train
    from invseg.runtime.config import read_yaml

    cfg = read_yaml(DEMO_CONFIG_NAME)
    cfg["data"].update(root=str(out / "data"), val_cases=held)
    cfg["train"].update(max_minutes=minutes, seed=seed)
    cfg["output"]["dir"] = str(out / "run")
    if (out / "run" / "last.pt").exists():  # a previous demo run: start over
        shutil.rmtree(out / "run")
    return train(cfg)


def demo(
    output: str | Path = Path("demo_output"),
    *,
    cases: int = 8,
    minutes: float = 4.0,
    seed: int = 0,
    preset: str = DEMO_PRESET,
) -> dict[str, Any]:
    """Synthesise a BraTS-format dataset, train for ``minutes``, predict held-out cases, score them.

    Args:
        output: folder for the dataset, run, predictions and figures (created).
        cases: number of synthetic labelled cases (at least 3); a quarter (at least 1) is held out.
        minutes: training time budget.
        seed: seed of the data and of training.
        preset: synthetic preset of the data (see :func:`invseg.data.synthesize`).

    Returns:
        A dict with keys ``dice`` (mean Dice per region), ``mean_dice``, ``run_dir``,
        ``predictions``, ``overlay``, ``table`` and ``seconds``.

    Raises:
        ValueError: fewer than 3 cases or a non-positive time budget.

    Example:
        >>> from invseg.tasks.config import load_config
        >>> load_config(DEMO_CONFIG_NAME).data.crop
        [32, 32, 32]
    """
    from invseg.commands.predict import predict
    from invseg.data import synthesize

    if int(cases) < 3:
        raise ValueError(f"cases={cases}: the demo needs at least 3 cases (train + held-out).")
    if float(minutes) <= 0:
        raise ValueError(f"minutes={minutes} must be positive.")
    start = time.monotonic()
    out = Path(output).expanduser()
    threads = torch.get_num_threads()
    torch.set_num_threads(min(2, threads))
    try:
        info = synthesize(
            "brats", out / "data", cases=int(cases), shape=DEMO_SHAPE, seed=seed, preset=preset
        )
        ids = sorted(c.case_id for c in info.cases)
        held = ids[-max(1, len(ids) // 4) :]
        run_dir = _train(out, held, float(minutes), int(seed))
        held_cases = [c for c in info.cases if c.case_id in held]
        folders = sorted({Path(c.images[0]).parent for c in held_cases})
        pred_dir = out / "predictions"
        # last.pt, not best.pt: best.pt is selected on the held-out cases scored below
        failures = predict(run_dir / "last.pt", folders, pred_dir, device="cpu")
        if failures:
            raise RuntimeError(f"demo: {failures} held-out case(s) failed to predict.")
        ref_dir = out / "labels"
        ref_dir.mkdir(parents=True, exist_ok=True)
        for c in held_cases:
            shutil.copyfile(c.label, ref_dir / f"{c.case_id}.nii.gz")
        df, table = _dice_table(pred_dir, ref_dir, out / "dice.csv", info.convention.name)
        print(table)
        dice = _mean_dice(df)
        overlay = _overlay(held_cases[0], info.modalities, pred_dir, out / "overlay.png")
    finally:
        torch.set_num_threads(threads)
    values = [v for v in dice.values() if np.isfinite(v)]
    result = {
        "dice": dice,
        "mean_dice": float(np.mean(values)) if values else float("nan"),
        "run_dir": run_dir,
        "predictions": pred_dir,
        "overlay": overlay,
        "table": table,
        "seconds": time.monotonic() - start,
    }
    print(
        f"demo: mean Dice {result['mean_dice']:.3f} on {len(held)} held-out case(s) in "
        f"{result['seconds'] / 60:.1f} min; outputs in {out}"
    )
    return result
