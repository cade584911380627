"""Shared measurement helpers for the benchmarks: step timing and peak CUDA memory."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_step_seconds(
    step: Callable[[], None], *, device: torch.device, repeats: int = 5, warmup: int = 1
) -> float:
    """Median wall time of ``step()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        step()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_cuda_bytes(step: Callable[[], None], device: torch.device) -> int | None:
    """Peak CUDA memory allocated during one ``step()`` (``None`` off CUDA)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device)


def describe_device(device: torch.device) -> str:
    """A human-readable name for the benchmark's device."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"


def mib(n: int | None) -> str:
    """Format a byte count in MiB for tables."""
    return "–" if n is None else f"{n / 2**20:.2f}"
