"""What :class:`~invseg.runtime.loop.Loop` is given: a :class:`Task` and
:class:`~invseg.runtime.settings.LoopSettings`.

Also the ways a run stops early (:class:`TrainingDiverged` and its :class:`NonFiniteLossError`,
decided by :class:`DivergenceGuard`; :class:`TrainingInterrupted`) and the check of what a
``--resume`` may change (:func:`resume_changes`).
"""

from __future__ import annotations

import contextlib
import math
import signal
import statistics
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from invseg.runtime.coerce import ConfigError
from invseg.runtime.device import Amp
from invseg.runtime.settings import LoopSettings

__all__ = [
    "DivergenceGuard",
    "NonFiniteLossError",
    "Task",
    "TrainingDiverged",
    "TrainingInterrupted",
    "apply_changed_hparams",
    "apply_hparams",
    "check_resume",
    "check_run_folder",
    "deferred_signals",
    "resume_changes",
    "stop_error",
    "weights_max",
]


class TrainingDiverged(RuntimeError):
    """The loss or the weights blew up (:class:`DivergenceGuard`); the last good checkpoint is
    kept. The CLI prints the one-line message and exits with status 2."""


class NonFiniteLossError(TrainingDiverged):
    """The training loss or the weights became NaN or Inf; the last good checkpoint is kept."""


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


def check_run_folder(last_path: Path, *, resume: bool) -> None:
    """Refuse to overwrite a run's ``last.pt``, or to resume a run without one.

    Raises:
        ConfigError: what to pass instead.
    """
    if not resume and last_path.exists():
        raise ConfigError(
            f"run folder '{last_path.parent}' already holds a checkpoint; pass --resume to "
            "continue it or choose another folder with -o/--output."
        )
    if resume and not last_path.exists():
        raise ConfigError(
            f"--resume: no checkpoint '{last_path}' to resume from; start the run without --resume."
        )


def check_resume(old: dict[str, Any], new: dict[str, Any], mutable: Sequence[str]) -> None:
    """Refuse a ``--resume`` whose config changes a key outside ``mutable``.

    Raises:
        ConfigError: one line naming the changed keys and what may change.
    """
    changed = resume_changes(old, new, mutable)
    if changed:
        raise ConfigError(
            f"--resume: {'; '.join(changed)} differs from the checkpoint's config; a resumed "
            f"run may change only {', '.join(mutable)}. Start a new run folder (-o DIR) for "
            "other changes."
        )


def apply_changed_hparams(
    optimizer: torch.optim.Optimizer, scheduler: Any, old: dict[str, Any], s: LoopSettings
) -> str | None:
    """Put the ``train.lr`` / ``train.weight_decay`` of ``s`` that differ from the checkpoint's
    config ``old`` into the restored optimizer; returns what changed (``None``: nothing)."""
    old_t, t = old.get("train", {}), s.config.get("train", {})
    lr = s.lr if old_t.get("lr") != t.get("lr") else None
    wd = s.weight_decay if old_t.get("weight_decay") != t.get("weight_decay") else None
    apply_hparams(optimizer, scheduler, lr=lr, weight_decay=wd)
    return f"train.lr {old_t.get('lr')} -> {lr}" if lr is not None else None


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


def weights_max(model: nn.Module) -> float:
    """``max |w|`` over the parameters of ``model``: NaN or Inf when any weight is not finite.

    Example:
        >>> net = nn.Linear(2, 1)
        >>> with torch.no_grad():
        ...     _ = net.weight.fill_(-3.0), net.bias.fill_(0.5)
        >>> weights_max(net)
        3.0
        >>> with torch.no_grad():
        ...     _ = net.bias.fill_(float("nan"))
        >>> weights_max(net)
        nan
    """
    peaks = [p.detach().abs().max().float() for p in model.parameters() if p.numel()]
    return float(torch.stack(peaks).max()) if peaks else 0.0  # torch's max propagates NaN


@dataclass
class DivergenceGuard:
    """The loop's divergence rule (documented in :mod:`invseg.runtime.loop`).

    Attributes:
        losses: the first :attr:`WINDOW` training losses of the run (their median is the
            reference of the loss rule).
        weight_max0: ``max |w|`` before the first optimizer step (the weight rule's reference).
    """

    LOSS_FACTOR = 1.0e3
    WEIGHT_FACTOR = 1.0e3
    WINDOW = 5

    losses: list[float] = field(default_factory=list)
    weight_max0: float | None = None

    def state(self) -> dict[str, Any]:
        """What a checkpoint stores, so a resumed run keeps the references of its first steps."""
        return {"losses": list(self.losses), "weight_max0": self.weight_max0}

    @classmethod
    def from_state(cls, state: Any) -> DivergenceGuard:
        """The guard of a checkpoint (a fresh one for checkpoints without it)."""
        if not isinstance(state, dict):
            return cls()
        try:
            w0 = state.get("weight_max0")
            losses = [float(v) for v in state.get("losses", [])][: cls.WINDOW]
            return cls(losses, None if w0 is None else float(w0))
        except (TypeError, ValueError):  # a malformed entry: the references start afresh
            return cls()

    def loss_problem(self, loss: float) -> str | None:
        """Why ``loss`` stops the run (non-finite, or above ``LOSS_FACTOR`` x the early median).

        Example:
            >>> g = DivergenceGuard([1.0, 0.5])
            >>> g.loss_problem(0.4), g.loss_problem(float("nan"))
            (None, 'loss is nan')
            >>> g.loss_problem(2e3)
            'the run diverged (loss 2000 > 1000 x 0.5, the median of its first losses)'
        """
        if not math.isfinite(loss):
            return f"loss is {loss}"
        ref = statistics.median(self.losses) if self.losses else 0.0
        if ref > 0 and loss > self.LOSS_FACTOR * ref:
            return (
                f"the run diverged (loss {loss:.4g} > {self.LOSS_FACTOR:g} x {ref:.4g}, the "
                "median of its first losses)"
            )
        if len(self.losses) < self.WINDOW:
            self.losses.append(loss)
        return None

    def weight_problem(self, peak: float) -> str | None:
        """Why weights with ``max |w| = peak`` stop the run (non-finite, or above
        ``WEIGHT_FACTOR x max(1, weight_max0)``).

        Example:
            >>> DivergenceGuard(weight_max0=0.5).weight_problem(1.5e3)
            'the run diverged (max |w| 1500 > 1000 x max(1, its initial 0.5))'
        """
        if not math.isfinite(peak):
            return f"weights are not finite (max |w| {peak})"
        w0 = peak if self.weight_max0 is None else self.weight_max0
        if peak > self.WEIGHT_FACTOR * max(1.0, w0):
            return (
                f"the run diverged (max |w| {peak:.4g} > {self.WEIGHT_FACTOR:g} x max(1, its "
                f"initial {w0:.4g}))"
            )
        return None


def stop_error(
    problem: str, where: str, *, kept: str | None, resume: str, finite: bool
) -> TrainingDiverged:
    """The one-line error of a run stopped by :class:`DivergenceGuard`.

    Args:
        problem: what went wrong (``"loss is nan"``). where: ``"at step 3 (epoch 0)"``.
        kept: the checkpoint that is kept (``None``: none was written). resume: the command
            that continues the run. finite: the values are finite (else NaN/Inf).
    """
    if kept is not None:
        advice = (
            f"the last checkpoint validated by a finite loss, {kept}, is kept. Lower train.lr, "
            "set train.amp=false or check the input data, then continue with "
            f"{resume} --set train.lr=..."
        )
    else:
        advice = (
            "no checkpoint had been written yet. Lower train.lr, set train.amp=false or "
            "check the input data for NaN voxels, then start the run again."
        )
    error = TrainingDiverged if finite else NonFiniteLossError
    return error(f"training stopped: {problem} {where}; {advice}")


@contextlib.contextmanager
def deferred_signals(on_signal: Callable[[int], None]) -> Iterator[None]:
    """Turn SIGINT / SIGTERM into a call of ``on_signal(signum)`` (a second one stops at once).

    Outside the main thread (where handlers cannot be set) nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        on_signal(signum)
        signal.signal(signum, signal.SIG_DFL)

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
