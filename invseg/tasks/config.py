"""Config schemas: segmentation (:class:`SegConfig`) and MoDL (:class:`ReconConfig`).

Both load through :func:`invseg.runtime.config.load`, so both get the same coercion, YAML 1.2
floats, did-you-mean hints and error messages.

Example:
    >>> cfg = load_config({"model": {"_target_": "UNet3D"}}, ["train.lr=3e-4"])
    >>> cfg.train.lr, cfg.infer.overlap
    (0.0003, 0.5)
    >>> load_recon_config({}, ["train.steps=3"]).train.steps
    3
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from invseg.runtime.config import ConfigError, Section, field, load, model_arguments, to_plain

__all__ = [
    "ReconConfig",
    "SegConfig",
    "load_config",
    "load_recon_config",
    "load_stored_recon_config",
]

Auto = Literal["auto"]


def _refuse_val_every(raw: Any, path: str, note: str) -> None:
    """Refuse ``<path>.val_every``, the name of ``val_every_steps`` before both tasks counted
    validations in optimizer steps.

    Raises:
        ConfigError: one line naming the new key, its unit and ``note`` (what changed).

    Example:
        >>> try:
        ...     _refuse_val_every({"val_every": 5}, "train", "it counted epochs")
        ... except ConfigError as err:
        ...     print(err)  # doctest: +NORMALIZE_WHITESPACE
        unknown config key 'train.val_every': it is now 'train.val_every_steps', counted in
        optimizer steps (it counted epochs).
    """
    if isinstance(raw, Mapping) and "val_every" in raw:
        raise ConfigError(
            f"unknown config key '{path}.val_every': it is now '{path}.val_every_steps', counted "
            f"in optimizer steps ({note})."
        )


# ------------------------------------------------------------------------------ segmentation
@dataclass
class SegData(Section):
    """``data``: where the cases are and how a training patch is cut."""

    root: str | None = None  # dataset folder as the challenge ships it
    layout: str | None = None  # auto-detected when null
    convention: str | None = "brats"  # brats | brats2023 | msd | iseg
    spacing: list[float] = field([1.0, 1.0, 1.0], length=3)  # mm, resampling target
    crop: list[int] | Auto = field([128, 128, 128], length=3)  # training patch (D, H, W)
    num_samples: int = field(1, ge=1)  # crops per loaded volume
    augment: bool = True
    val_fraction: float = field(0.2, ge=0.0, lt=1.0)  # used when val_cases is null
    val_cases: list[str] | None = None  # explicit validation case ids
    split_seed: int = 0  # seeds the validation split only (not train.seed: same cases per seed)
    cache_rate: float = field(0.0, ge=0.0, le=1.0)

    def check(self, path: str) -> None:
        """Positive crop and spacing."""
        if self.crop != "auto" and min(self.crop) < 1:
            raise ConfigError(f"data.crop: {self.crop} must be positive sizes")
        if min(self.spacing) <= 0:
            raise ConfigError(f"data.spacing: {self.spacing} must be positive")


@dataclass
class SegLoss(Section):
    """``train.loss``: weights of the terms (:mod:`invseg.tasks.seg_loss`).

    ``ce`` (softmax cross-entropy) applies to label conventions (iSeg), ``bce`` (per-channel
    binary cross-entropy) to region conventions (BraTS); unset, the one that applies is 1.0 and
    a non-zero weight for the other is an error. ``vae``: the VAE branch's loss, when on.
    """

    dice: float = field(1.0, ge=0)
    ce: float | None = field(None, ge=0)
    bce: float | None = field(None, ge=0)
    vae: float = field(1.0, ge=0)


@dataclass
class SegTrain(Section):
    """``train``: optimisation, schedule, checkpoints, device."""

    epochs: int = field(100, ge=1)  # ignored when steps is set
    steps: int | None = field(None, ge=1)  # optimizer steps; overrides epochs
    max_minutes: float | None = field(None, gt=0)  # wall-clock budget; stops with a checkpoint
    batch_size: int = field(1, ge=1)  # per process
    accumulation: int = field(1, ge=1)  # micro-batches per optimizer step
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = field(1.0e-4, gt=0, le=10)  # above 10 no optimizer converges
    weight_decay: float = field(1.0e-5, ge=0)
    momentum: float = field(0.99, ge=0, lt=1)  # sgd only
    scheduler: Literal["cosine", "poly", "constant"] = "cosine"
    warmup_steps: int = field(0, ge=0)
    grad_clip: float | None = field(None, gt=0)
    amp: bool = True  # bf16 autocast on CPU, fp16 + GradScaler on CUDA
    seed: int = 0
    deterministic: bool = True
    val_every_steps: int = field(250, ge=1)  # optimizer steps between validations (and at end)
    checkpoint_every: int | None = field(100, ge=1)  # optimizer steps between last.pt writes
    num_workers: int | Auto = field("auto", ge=0)  # auto: min(4, CPUs - 1)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    measure_memory: bool = True
    progress: bool = True
    memory_budget: str | None = None  # with data.crop=auto: e.g. 12GB
    loss: SegLoss = field(SegLoss())

    @classmethod
    def build(cls, raw: Mapping[str, Any] | None, path: str) -> SegTrain:
        """The section, refusing the old ``val_every`` (epochs) with the key that replaced it."""
        _refuse_val_every(
            raw, path, "it counted epochs; an epoch is cases / batch_size / accumulation steps"
        )
        return super().build(raw, path)


@dataclass
class SegInfer(Section):
    """``infer``: sliding-window prediction (also used by validation)."""

    roi_size: list[int] | Auto = field("auto", length=3)  # auto: the crop on CPU
    # 2: at batch 1 torch runs CPU conv3d on a native path 3-8x slower per window than oneDNN
    sw_batch_size: int = field(2, ge=1)
    overlap: float = field(0.5, ge=0, lt=1)
    tta: bool = False


@dataclass
class Output(Section):
    """``output``: the run folder."""

    dir: str = "runs/invseg"


@dataclass
class SegConfig(Section):
    """A segmentation run: ``data``, ``model`` (``_target_`` + kwargs), ``train``, ``infer``,
    ``output``."""

    data: SegData = field(SegData())
    model: dict[str, Any] = field({"_target_": "invseg.nets.PartiallyInvResUNet"})
    train: SegTrain = field(SegTrain())
    infer: SegInfer = field(SegInfer())
    output: Output = field(Output())

    def check(self, path: str) -> None:
        """``model._target_`` is a registered network and every other model key one of its
        arguments, as plain data (:func:`invseg.runtime.config.model_arguments`)."""
        model_arguments(self.model)


def load_config(source: str | Path | Mapping[str, Any], overrides: Sequence[str] = ()) -> SegConfig:
    """A segmentation config from a YAML file, packaged name or mapping, plus overrides."""
    return load(SegConfig, source, overrides)


# ------------------------------------------------------------------------------ reconstruction
@dataclass
class ReconData(Section):
    """``data``: the simulated k-space."""

    kind: Literal["2d", "3d", "cine"] = "2d"
    phantom: Literal["shepp_logan", "mni152"] = "shepp_logan"  # 2d only; cine: beating phantom
    shape: list[int] = field([32, 32])  # (H, W), (D, H, W) or (T, H, W)
    num_coils: int = field(4, ge=1)
    acceleration: float = field(4.0, ge=1)
    mask: Literal["poisson", "cartesian", "kt"] = "poisson"
    calib: int = field(8, ge=0)
    noise_std: float = field(0.0, ge=0)
    train_samples: int = field(16, ge=1)
    val_samples: int = field(4, ge=1)
    seed: int = 0


@dataclass
class ReconModel(Section):
    """``model``: the arguments of :class:`invseg.recon.MoDL` (same names and defaults)."""

    num_unrolls: int = field(10, ge=1)
    spatial_dims: Literal[2, 3] = 2
    channels: int = field(64, ge=1)
    layers: int = field(5, ge=2)
    shared_weights: bool = True
    memory: Literal["invert", "checkpoint", "store"] = "invert"
    cg_iters: int = field(30, ge=1)  # CG cap per solve
    cg_tol: float = field(1.0e-5, gt=0)  # CG relative residual tolerance
    mu_init: float = field(0.05, gt=0)  # >= mu_min
    anchor_every: int | Auto | None = field(1, ge=1)  # auto: from drift_tol; null: none
    lipschitz: float = field(0.9, gt=0, lt=1)  # certified bound of the denoiser residual
    init: Literal["adjoint", "sense"] = "adjoint"
    fixed_point_iters: int = field(50, ge=1)
    fixed_point_tol: float = field(1.0e-6, gt=0)
    drift_tol: float | None = field(1.0e-3, gt=0)  # drift budget of rebuilt inputs
    dc_refine_steps: int = field(1, ge=0)
    mu_min: float = field(0.05, gt=0)  # floor of the learnable mu
    drift_every: int | None = field(None, ge=1)  # measure drift every n backwards; null: never
    lipschitz_grid: int | None = field(None, ge=16)  # null: 32 in 2D, 24 in 3D

    def check(self, path: str) -> None:
        """``mu_init`` at or above ``mu_min``; ``anchor_every: auto`` needs ``drift_tol``."""
        if self.mu_init < self.mu_min:
            raise ConfigError(
                f"{path}.mu_init: {self.mu_init} must be >= {path}.mu_min ({self.mu_min})"
            )
        if self.anchor_every == "auto" and self.drift_tol is None:
            raise ConfigError(
                f"{path}.drift_tol: null is not allowed with {path}.anchor_every 'auto' "
                "(the drift budget picks the spacing); set a tolerance such as 1e-3"
            )


@dataclass
class ReconTrain(Section):
    """``train``: optimisation of MoDL."""

    steps: int = field(200, ge=1)
    batch_size: int = field(2, ge=1)
    lr: float = field(1.0e-3, gt=0, le=10)
    loss: Literal["mse", "l1"] = "mse"  # on the complex image
    grad_clip: float | None = field(None, gt=0)
    seed: int = 0
    val_every_steps: int = field(50, ge=1)  # optimizer steps between validations (and at end)
    checkpoint_every: int | None = field(50, ge=1)
    device: str = "cpu"  # cpu | cuda | auto
    dtype: Literal["float32", "float64"] = "float32"
    progress: bool = False

    @classmethod
    def build(cls, raw: Mapping[str, Any] | None, path: str) -> ReconTrain:
        """The section, refusing the old ``val_every`` with the key that replaced it."""
        _refuse_val_every(raw, path, "the unit it had: only the name changed")
        return super().build(raw, path)


@dataclass
class ReconConfig(Section):
    """A MoDL run on simulated k-space: ``data``, ``model``, ``train``, ``output``."""

    data: ReconData = field(ReconData())
    model: ReconModel = field(ReconModel())
    train: ReconTrain = field(ReconTrain())
    output: Output = field(Output("runs/recon"))

    def check(self, path: str) -> None:
        """Shapes, dimensions and masks that fit ``data.kind``."""
        d = self.data
        ndim = 2 if d.kind == "2d" else 3
        if len(d.shape) != ndim:
            raise ConfigError(f"data.shape: {d.shape} must have {ndim} sizes for kind {d.kind!r}")
        if self.model.spatial_dims != ndim:
            raise ConfigError(
                f"model.spatial_dims: {self.model.spatial_dims} must be {ndim} for data.kind "
                f"{d.kind!r} (3 for 3D slabs and 2D+time)"
            )
        if d.kind == "cine" and d.mask != "kt":
            raise ConfigError(f"data.mask: {d.mask!r} must be 'kt' for data.kind 'cine'")


def load_recon_config(
    source: str | Path | Mapping[str, Any], overrides: Sequence[str] = ()
) -> ReconConfig:
    """A MoDL config from a YAML file, packaged name or mapping, plus overrides."""
    return load(ReconConfig, source, overrides)


def load_stored_recon_config(stored: Mapping[str, Any]) -> ReconConfig:
    """The config a recon checkpoint stores, also one written before ``train.val_every`` was
    renamed ``train.val_every_steps`` (same unit, so the value is kept).

    Example:
        >>> load_stored_recon_config({"train": {"val_every": 7}}).train.val_every_steps
        7
    """
    raw = to_plain(stored)
    train = raw.get("train")
    if isinstance(train, dict) and "val_every" in train:
        train.setdefault("val_every_steps", train.pop("val_every"))
    return load(ReconConfig, raw)
