"""The ``invseg train`` config of one ``bench quality`` row: zoo model, data and recipe.

Every row of :mod:`invseg.bench.quality` is trained by :func:`invseg.commands.train.train` on the
mapping that :func:`row_config` builds (the :class:`~invseg.tasks.config.SegConfig` schema), and
the run folder keeps it as ``config.yaml``: ``invseg train <run>/config.yaml -o DIR`` repeats the
row. :func:`model_section` gives each zoo entry as a ``model`` section (``_target_`` and plain
arguments) that builds the same network as :func:`invseg.bench.models.build` (a test compares
them entry by entry).

Example:
    >>> model_section("unet3d", in_channels=4, out_channels=3, crop=(32, 32, 32), base=8)
    {'_target_': 'invseg.nets.UNet3D', 'spatial_dims': 3, 'in_channels': 4, 'out_channels': 3, \
'channels': [8, 16, 32, 64], 'memory': 'store'}
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from invseg._choices import check_option
from invseg.bench.models import ZOO, dynunet_layout

__all__ = ["model_section", "row_config"]

_NETS, _MONAI = "invseg.nets.", "monai.networks.nets."


def _widths(base: int) -> list[int]:
    return [base, 2 * base, 4 * base, 8 * base]


def _unet3d(memory: str) -> Callable[..., dict[str, Any]]:
    def make(io: dict[str, int], crop: list[int], base: int) -> dict[str, Any]:
        return {"_target_": _NETS + "UNet3D", **io, "channels": _widths(base), "memory": memory}

    return make


def _inv(cls: str, *, vae: bool = False, **extra: Any) -> Callable[..., dict[str, Any]]:
    def make(io: dict[str, int], crop: list[int], base: int) -> dict[str, Any]:
        out = {"_target_": _NETS + cls, **io, "channels": _widths(base), "memory": "invert"}
        return out | ({"vae": True, "input_image_size": crop} if vae else {}) | extra

    return make


def _segresnet(vae: bool) -> Callable[..., dict[str, Any]]:
    def make(io: dict[str, int], crop: list[int], base: int) -> dict[str, Any]:
        out = {"_target_": _MONAI + ("SegResNetVAE" if vae else "SegResNet"), **io}
        out["init_filters"] = max(base // 2, 8)
        return out | ({"input_image_size": crop} if vae else {})

    return make


def _dynunet(io: dict[str, int], crop: list[int], base: int) -> dict[str, Any]:
    return {"_target_": _MONAI + "DynUNet", **io, **dynunet_layout(crop, base), "res_block": False}


def _monai_unet(target: str) -> Callable[..., dict[str, Any]]:
    def make(io: dict[str, int], crop: list[int], base: int) -> dict[str, Any]:
        return {
            "_target_": target, **io, "channels": _widths(base), "strides": [2, 2, 2],
            "num_res_units": 2,
        }  # fmt: skip

    return make


#: One ``model`` section maker per zoo entry (:data:`invseg.bench.models.ZOO`).
SECTIONS: dict[str, Callable[..., dict[str, Any]]] = {
    "unet3d": _unet3d("store"),
    "unet3d_ckpt": _unet3d("checkpoint"),
    "partially": _inv("PartiallyInvResUNet"),
    "partially_vae": _inv("PartiallyInvResUNet", vae=True),
    "fully": _inv("FullyInvResUNet"),
    "fully_vae": _inv("FullyInvResUNet", vae=True),
    "partially_deep": _inv("PartiallyInvResUNet", blocks=4),
    "fully_deep": _inv("FullyInvResUNet", blocks=4),
    "fully_lift": _inv("FullyInvResUNet", lift=True),
    "segresnet": _segresnet(False),
    "segresnetvae": _segresnet(True),
    "dynunet": _dynunet,
    "monai_unet": _monai_unet(_MONAI + "UNet"),
    "monai_checkpoint_unet": _monai_unet(_MONAI + "unet.CheckpointUNet"),
}


def model_section(
    name: str, *, in_channels: int, out_channels: int, crop: Sequence[int], base: int
) -> dict[str, Any]:
    """The ``model`` section (``_target_`` + plain arguments) of zoo entry ``name``.

    Raises:
        ValueError: an unknown zoo name (with a did-you-mean hint).
    """
    name = check_option("zoo model", name, tuple(ZOO))
    io = {"spatial_dims": 3, "in_channels": int(in_channels), "out_channels": int(out_channels)}
    return SECTIONS[name](io, [int(c) for c in crop], int(base))


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
