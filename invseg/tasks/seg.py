r"""Segmentation as a training task: data, network, loss, validation for the runtime loop.

The loss (:mod:`invseg.tasks.seg_loss`) is Dice plus per-channel binary cross-entropy for
BraTS-like region conventions (a sigmoid per region) and Dice plus softmax cross-entropy for
label conventions (iSeg), each weighted by ``train.loss``; :math:`w_\mathrm{vae}` times the
VAE loss the network returns with its logits (``(logits, vae_loss)``) is added when its VAE
branch is on. With ``model.deep_supervision: true`` the network returns the logits of every
decoder level but the lowest while training, and MONAI's ``DeepSupervisionLoss`` sums the loss
of each against the target resized to it, weighted 1, 1/2, 1/4, ...
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.losses import DeepSupervisionLoss
from torch import nn

from invseg._choices import did_you_mean
from invseg.engine import activation_bytes
from invseg.nets.registry import check_plain, full_name
from invseg.nets.vae import vae_kwargs
from invseg.runtime.checkpoint import RunMeta
from invseg.runtime.config import ConfigError, instantiate_model, to_plain
from invseg.runtime.device import Amp, auto_workers
from invseg.runtime.distributed import DistInfo
from invseg.tasks.config import SegConfig
from invseg.tasks.seg_data import SegData, validation_metrics
from invseg.tasks.seg_loss import loss_weights, segmentation_loss

__all__ = ["SegTask", "checkpoint_kwargs", "lr_lambda", "split_cases"]

#: Config keys a ``--resume`` may change (the others are refused).
RESUME_MUTABLE = (
    "train.steps",
    "train.epochs",
    "train.max_minutes",
    "train.lr",
    "train.weight_decay",
    "train.grad_clip",
    "train.val_every",
    "train.val_every_steps",
    "train.checkpoint_every",
    "train.num_workers",
    "train.device",
    "train.measure_memory",
    "train.progress",
    "data.root",
    "data.cache_rate",
    "infer",
    "output",
)


def checkpoint_kwargs(model_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The ``model`` section's arguments as the plain values a checkpoint stores.

    The user's config is the user's code: its ``$`` expressions and ``@`` references are
    resolved here, once, at the start of training. A checkpoint is data: what it stores must
    be plain (:func:`invseg.nets.registry.check_plain`), so
    :func:`invseg.runtime.restore.load_model` rebuilds the network evaluating nothing.

    Raises:
        ConfigError: an argument that resolves to an object (``model.<key>`` named).

    Example:
        >>> checkpoint_kwargs({"_target_": "invseg.nets.UNet3D", "channels": "$[4, 8]"})
        {'channels': [4, 8]}
    """
    from monai.bundle import ConfigParser

    parser = ConfigParser({"model": copy.deepcopy(dict(model_cfg))})
    out: dict[str, Any] = {}
    for key in model_cfg:
        if key == "_target_":
            continue
        value = to_plain(parser.get_parsed_content(f"model#{key}", instantiate=False))
        try:
            check_plain(value, f"model.{key}")
        except ValueError as err:
            raise ConfigError(
                f"{err}; a checkpoint stores plain values only: give this argument as names, "
                "numbers or lists"
            ) from None
        out[key] = value
    return out


def lr_lambda(kind: str, total: int, warmup: int):
    """Multiplier of the base learning rate at a step: linear warmup, then cosine/poly/constant.

    Example:
        >>> f = lr_lambda("cosine", 10, 0); f(0), round(f(10), 6)
        (1.0, 0.0)
    """

    def fn(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        t = min(1.0, (step - warmup) / max(1, total - warmup))
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * t))
        if kind == "poly":
            return (1.0 - t) ** 0.9
        return 1.0

    return fn


def split_cases(
    cases: Sequence[Any], *, val_cases: Sequence[str] | None, val_fraction: float, seed: int
) -> tuple[list[Any], list[Any]]:
    """Split labelled cases into (train, validation), deterministically for a seed.

    Raises:
        ConfigError: unknown validation case id or nothing left to train on.

    Example:
        >>> from types import SimpleNamespace as C
        >>> tr, va = split_cases([C(case_id=str(i)) for i in range(5)], val_cases=["3"],
        ...                      val_fraction=0.2, seed=0)
        >>> [c.case_id for c in va], len(tr)
        (['3'], 4)
    """
    ids = [c.case_id for c in cases]
    if val_cases is not None:
        wanted = [str(v) for v in val_cases]
        for v in wanted:
            if v not in ids:
                raise ConfigError(
                    f"data.val_cases: no labelled case '{v}' in the dataset.{did_you_mean(v, ids)}"
                )
        val = [c for c in cases if c.case_id in wanted]
    else:
        order = sorted(ids)
        random.Random(seed).shuffle(order)
        n_val = round(val_fraction * len(order))
        if val_fraction > 0 and len(order) > 1:
            n_val = max(1, n_val)
        chosen = set(order[:n_val])
        val = [c for c in cases if c.case_id in chosen]
    train_ = [c for c in cases if c not in val]
    if not train_:
        raise ConfigError(
            "no training cases left after the validation split; lower "
            "data.val_fraction or shorten data.val_cases."
        )
    return train_, val


class SegTask:
    """A segmentation run for :class:`~invseg.runtime.loop.Loop`.

    Args:
        cfg: the resolved config.
        info: rank and device of this process.
    """

    score = "dice_mean"

    def __init__(self, cfg: SegConfig, info: DistInfo) -> None:
        from monai.utils import set_determinism

        self.cfg, self.info = cfg, info
        t = cfg.train
        set_determinism(seed=t.seed if t.deterministic else None)
        torch.manual_seed(t.seed)
        self.data = SegData(cfg, info, split_cases)
        self.has_validation = self.data.val_ds is not None
        self.roi_size = self._roi_size()
        self._setup_model()

    def _roi_size(self) -> list[int]:
        roi = self.cfg.infer.roi_size
        if roi != "auto":
            return list(roi)
        if self.info.device.type == "cpu":
            return list(self.data.crop)
        return [max(128, c) for c in self.data.crop]

    def _setup_model(self) -> None:
        t, conv = self.cfg.train, self.data.convention
        mcfg = vae_kwargs(self.cfg.model, self.data.crop)  # the VAE is built for the crop
        self.model = instantiate_model(mcfg).to(self.info.device)
        self.model_target = full_name(type(self.model)) or str(mcfg["_target_"])
        self.model_kwargs = checkpoint_kwargs(mcfg)
        mods = self.data.modalities
        in_ch = mcfg.get("in_channels")
        if mods and in_ch is not None and int(in_ch) != len(mods):
            raise ConfigError(
                f"model.in_channels: {in_ch} but the dataset has {len(mods)} modalities "
                f"({', '.join(mods)}); set --set model.in_channels={len(mods)}."
            )
        out_ch = mcfg.get("out_channels")
        if out_ch is not None and int(out_ch) != conv.out_channels:
            raise ConfigError(
                f"model.out_channels: {out_ch} but convention '{conv.name}' needs "
                f"{conv.out_channels}."
            )
        self.loss_weights = loss_weights(t.loss.to_dict(), conv.kind, conv.name)
        # one output, or one per decoder level (model.deep_supervision): targets are resized
        # to each and the losses weighted 1, 1/2, 1/4, ... (MONAI's DeepSupervisionLoss)
        self.loss_fn = DeepSupervisionLoss(segmentation_loss(self.loss_weights, conv.kind))
        params = [p for p in self.model.parameters() if p.requires_grad]
        if t.optimizer == "sgd":
            self.optimizer: torch.optim.Optimizer = torch.optim.SGD(
                params,
                lr=t.lr,
                weight_decay=t.weight_decay,
                momentum=t.momentum,
                nesterov=t.momentum > 0,
            )
        else:
            opt = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
            self.optimizer = opt(params, lr=t.lr, weight_decay=t.weight_decay)
        n_batches = math.ceil(len(self.data.train_ds) / self.info.world_size / t.batch_size)
        self.steps_per_epoch = math.ceil(n_batches / t.accumulation)
        self.total_steps = t.steps if t.steps is not None else t.epochs * self.steps_per_epoch
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(t.scheduler, self.total_steps, t.warmup_steps)
        )

    # ------------------------------------------------------------------ Task protocol
    def describe(self, amp: Amp) -> list[str]:
        """Model size, cases, steps and (``train.measure_memory``) activation bytes."""
        t, d = self.cfg.train, self.data
        n_params = sum(p.numel() for p in self.model.parameters())
        lines = [
            f"model {self.cfg.model['_target_']}: {n_params / 1e6:.3f} M parameters; "
            f"{len(d.train_cases)} training / {len(d.val_cases)} validation cases; "
            f"{self.total_steps} optimizer steps on {self.info.device} x {self.info.world_size}"
        ]
        if d.val_cases:
            names = [c.case_id for c in d.val_cases]
            more = f", ... ({len(names)} in all)" if len(names) > 8 else ""
            lines.append(f"validation cases: {', '.join(names[:8])}{more}")
        if self.cfg.data.crop == "auto":
            lines.append(f"data.crop auto: {d.crop} fits train.memory_budget {t.memory_budget}")
        if t.measure_memory and self.info.is_main:
            channels = len(d.modalities) or int(self.cfg.model.get("in_channels", 1))
            x = torch.zeros(t.batch_size, channels, *d.crop, device=self.info.device)
            with amp():
                nbytes = int(activation_bytes(self.model, x))
            self.model.zero_grad(set_to_none=True)
            lines.append(
                f"activation memory per training step (crop {'x'.join(map(str, d.crop))}, "
                f"batch {t.batch_size}, amp={t.amp}): {nbytes / 2**20:.1f} MiB"
            )
        return lines

    def batches(self, epoch: int) -> Any:
        """This rank's shard of the shuffled training crops of ``epoch``."""
        return self.data.loader(epoch, auto_workers(self.cfg.train.num_workers))

    def loss(self, model: nn.Module, batch: dict[str, Any], amp: Amp) -> torch.Tensor:
        """Dice (+ CE) (+ VAE) loss of one batch; a non-finite input voxel names its file."""
        image = batch["image"].to(self.info.device, non_blocking=True)
        target = batch["label"].to(self.info.device, non_blocking=True)
        if not bool(torch.isfinite(image).all()):
            self.data.raise_non_finite(batch)
        with amp():
            out = model(image)
        logits, vae = out if isinstance(out, tuple) else (out, None)  # (logits, vae_loss)
        loss = self.loss_fn(logits, target)  # logits: a list under model.deep_supervision
        if vae is not None and self.cfg.train.loss.vae:
            loss = loss + self.cfg.train.loss.vae * vae.float()
        return loss

    @torch.no_grad()
    def validate(self, amp: Amp) -> dict[str, float]:
        """Mean Dice and HD95 (mm, at ``data.spacing``) per region over the validation cases."""
        i = self.cfg.infer
        self.model.eval()
        try:
            return validation_metrics(
                self.model,
                self.data,
                amp,
                roi_size=self.roi_size,
                sw_batch_size=i.sw_batch_size,
                overlap=i.overlap,
            )
        finally:
            self.model.train()

    def step_metrics(self) -> dict[str, float]:
        """No extra per-step columns."""
        return {}

    def meta(self) -> dict[str, Any]:
        """The :class:`~invseg.runtime.checkpoint.RunMeta` of this run, as a dict."""
        i, d = self.cfg.infer, self.data
        return RunMeta(
            target=self.model_target,
            kwargs=self.model_kwargs,
            convention=d.convention.name,
            modalities=list(d.modalities),
            layout=d.layout,
            spacing=list(d.spacing),
            crop=list(d.crop),
            roi_size=list(self.roi_size),
            sw_batch_size=i.sw_batch_size,
            overlap=i.overlap,
            tta=i.tta,
            amp=self.cfg.train.amp,
        ).to_dict()

    def finish(self, rows: list[dict[str, Any]], run_dir: Path) -> None:
        """Write ``curves.png``."""
        import pandas as pd

        from invseg.runtime.plots import plot_curves

        if rows:
            plot_curves(pd.DataFrame(rows), run_dir / "curves.png")
