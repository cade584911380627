"""What :class:`~invseg.runtime.loop.Loop` is given: a :class:`Task`, :class:`LoopSettings`.

Also the two ways a run stops early (:class:`NonFiniteLossError`, :class:`TrainingInterrupted`)
and the check of what a ``--resume`` may change (:func:`resume_changes`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from invseg.runtime.device import Amp

__all__ = [
    "LoopSettings",
    "NonFiniteLossError",
    "Task",
    "TrainingInterrupted",
    "apply_hparams",
    "resume_changes",
]


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or Inf; the last checkpoint with a finite loss is kept."""


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM stopped training after writing a checkpoint.

    Attributes:
        exit_code: ``128 + signal number`` (130 for SIGINT, 143 for SIGTERM).
    """

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + int(signum)


class Task(Protocol):
    """What a training task supplies to :class:`Loop`."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any  # a LambdaLR or None
    score: str  # validation metric that selects best.pt (larger is better)
    has_validation: bool

    def describe(self, amp: Amp) -> list[str]:
        """Lines printed at the start (model, data, memory)."""

    def batches(self, epoch: int) -> Iterable[Any]:
        """This rank's batches of ``epoch``, deterministic for a seed (``len()`` must work)."""

    def loss(self, model: nn.Module, batch: Any, amp: Amp) -> torch.Tensor:
        """Scalar loss of one micro-batch (``model`` may be wrapped in DDP)."""

    def validate(self, amp: Amp) -> dict[str, float]:
        """Validation metrics (rank 0 only)."""

    def step_metrics(self) -> dict[str, float]:
        """Extra per-step CSV columns."""

    def meta(self) -> dict[str, Any] | None:
        """The checkpoint's ``meta`` entry."""

    def finish(self, rows: list[dict[str, Any]], run_dir: Path) -> None:
        """Called on rank 0 after the run (plots)."""


@dataclass
class LoopSettings:
    """How :class:`Loop` runs a task.

    Attributes:
        run_dir: the run folder. total_steps: optimizer steps to reach.
        config: the resolved config (plain data) stored in config.yaml and checkpoints.
        resume_mutable: dotted config keys a ``--resume`` may change; other changes are refused.
        val_every_epochs / val_every_steps: validation period (either or both).
        lr, weight_decay: applied to a resumed optimizer when the config changed them.
        resume_hint: the command that continues a run (for messages).
    """

    run_dir: Path
    total_steps: int
    config: dict[str, Any]
    accumulation: int = 1
    checkpoint_every: int | None = None
    val_every_epochs: int | None = None
    val_every_steps: int | None = None
    max_minutes: float | None = None
    amp: bool = False
    grad_clip: float | None = None
    progress: bool = True
    resume: bool = False
    lr: float | None = None
    weight_decay: float | None = None
    resume_mutable: tuple[str, ...] = ()
    resume_hint: str = "invseg train CONFIG --resume"
    csv_columns: tuple[str, ...] = field(default=("step", "epoch", "loss", "lr", "time_s"))


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def resume_changes(old: dict[str, Any], new: dict[str, Any], mutable: Iterable[str]) -> list[str]:
    """Config keys whose value differs between a checkpoint and now and may not change.

    Example:
        >>> resume_changes({"train": {"lr": 1, "bs": 1}}, {"train": {"lr": 2, "bs": 2}},
        ...                ["train.lr"])
        ['train.bs: 1 -> 2']
    """
    a, b = _flatten(old), _flatten(new)
    allowed = tuple(mutable)
    out = []
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key) and not any(
            key == m or key.startswith(m + ".") for m in allowed
        ):
            out.append(f"{key}: {a.get(key)!r} -> {b.get(key)!r}")
    return out


def apply_hparams(
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    *,
    lr: float | None = None,
    weight_decay: float | None = None,
) -> None:
    """Set a new base learning rate / weight decay on a restored optimizer (and its LambdaLR).

    The current rate becomes ``lr * lambda(step)``, as if the run had started with ``lr``.

    Example:
        >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        >>> sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5)
        >>> apply_hparams(opt, sched, lr=0.1); opt.param_groups[0]["lr"]
        0.05
    """
    for k, group in enumerate(optimizer.param_groups):
        if lr is not None:
            group["initial_lr"] = lr
            scale = 1.0
            if scheduler is not None:
                scheduler.base_lrs[k] = lr
                scale = scheduler.lr_lambdas[k](scheduler.last_epoch)
            group["lr"] = lr * scale
        if weight_decay is not None:
            group["weight_decay"] = weight_decay
