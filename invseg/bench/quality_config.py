"""The ``invseg train`` config of one ``bench quality`` row: zoo model, data and recipe.

Every row of :mod:`invseg.bench.quality` is trained by :func:`invseg.commands.train.train` on the
mapping that :func:`row_config` builds (the :class:`~invseg.tasks.config.SegConfig` schema), and
the run folder keeps it as ``config.yaml``: ``invseg train <run>/config.yaml -o DIR`` repeats the
row. Its ``model`` section is the zoo entry itself (:func:`invseg.bench.models.model_section`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from invseg.bench.models import ZOO, model_section

__all__ = ["row_config"]


def row_config(
    name: str,
    *,
    root: str | Path,
    crop: int,
    preset: Any,
    seed: int,
    device: str,
    run_dir: str | Path,
) -> dict[str, Any]:
    """The full ``invseg train`` config of one row (a plain mapping, YAML-ready).

    Args:
        name: zoo entry.
        root: folder holding exactly the row's training cases (BraTS layout).
        crop: cubic training crop, also the sliding-window size.
        preset: a :class:`invseg.bench.quality.Preset` (steps, lr, batch, base, overlap).
        seed: ``train.seed`` (weights, crop order, augmentation); the split is fixed.
        device: ``train.device``.
        run_dir: ``output.dir``.

    The recipe: AdamW (weight decay 1e-5), cosine schedule without warm-up, ``train.steps``
    optimizer steps of ``preset.batch`` crops from one case (``data.num_samples``), Dice + BCE
    (``train.loss``; the VAE term at the zoo's weight), float32 (``train.amp: false``), every
    case trains (``data.val_fraction: 0``: no validation, ``last.pt`` holds the final weights).
    """
    cube = [int(crop)] * 3
    return {
        "data": {
            "root": str(Path(root).resolve()), "convention": "brats", "spacing": [1.0] * 3,
            "crop": cube, "num_samples": int(preset.batch), "augment": True,
            "val_fraction": 0.0, "split_seed": 0, "cache_rate": 1.0,
        },
        "model": model_section(name, in_channels=4, out_channels=3, crop=cube, base=preset.base),
        "train": {
            "steps": int(preset.steps), "batch_size": 1, "optimizer": "adamw",
            "lr": float(preset.lr), "weight_decay": 1.0e-5, "scheduler": "cosine",
            "warmup_steps": 0, "amp": False, "seed": int(seed), "deterministic": True,
            "checkpoint_every": None, "num_workers": 0, "device": device,
            "measure_memory": False, "progress": False,
            "loss": {"dice": 1.0, "bce": 1.0, "vae": float(ZOO[name].vae_scale)},
        },
        "infer": {"roi_size": cube, "sw_batch_size": 4, "overlap": float(preset.overlap)},
        "output": {"dir": str(run_dir)},
    }  # fmt: skip
