"""Device choice, mixed precision and data-loader workers, shared by every command.

Example:
    >>> resolve_device("cpu")
    device(type='cpu')
    >>> auto_workers("auto") <= 4
    True
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import Any

import torch

from invseg._choices import did_you_mean

__all__ = ["Amp", "auto_workers", "cpu_count", "resolve_device"]


def resolve_device(device: str | torch.device) -> torch.device:
    """Turn ``"auto" | "cpu" | "cuda" | "cuda:N"`` into a :class:`torch.device`.

    Raises:
        ValueError: unknown name, or CUDA asked for but not available.
    """
    if isinstance(device, torch.device):
        return device
    name = str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(
                f"device '{device}' requested but CUDA is not available; use --device cpu or auto."
            )
        return torch.device(name)
    hint = did_you_mean(name, ["auto", "cpu", "cuda"])
    raise ValueError(f"unknown device '{device}': use auto, cpu, cuda or cuda:N.{hint}")


def cpu_count() -> int:
    """CPUs this process may run on (its affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return max(1, os.cpu_count() or 1)


def auto_workers(value: int | str) -> int:
    """Data-loader workers: ``"auto"`` is ``min(4, CPUs - 1)``; a number is kept."""
    if value == "auto":
        return max(0, min(4, cpu_count() - 1))
    return int(value)


class Amp:
    """Mixed precision for one device: bf16 autocast on CPU, fp16 + GradScaler on CUDA.

    Args:
        device: where the model runs.
        enabled: off gives a no-op context and no scaler.
    """

    def __init__(self, device: torch.device, enabled: bool) -> None:
        self.enabled = bool(enabled)
        self.scaler: Any = None
        self._factory: Callable[[], Any] = contextlib.nullcontext
        if self.enabled and device.type == "cuda":
            self.scaler = torch.amp.GradScaler("cuda")
            self._factory = lambda: torch.autocast("cuda", dtype=torch.float16)
        elif self.enabled:
            self._factory = lambda: torch.autocast("cpu", dtype=torch.bfloat16)

    def __call__(self) -> Any:
        """A fresh autocast context."""
        return self._factory()
