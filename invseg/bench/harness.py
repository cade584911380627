"""Shared measurement helpers for the benchmarks: step timing, exact bytes, peak CUDA memory,
peak RSS of a process."""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from invseg.engine import activation_bytes


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


def mib(n: int | None, digits: int = 2) -> str:
    """Format a byte count in MiB for tables (``"–"`` for ``None``)."""
    return "–" if n is None else f"{n / 2**20:.{digits}f}"


@dataclass
class Row:
    """One measured configuration of a benchmark table."""

    name: str
    memory: str
    params: int
    act_bytes: int
    step_s: float
    peak_bytes: int | None = None
    host_bytes: int = 0  # saved tensors offloaded to host memory (save_on_cpu)


def step_seconds(step: Callable[[], None], device: torch.device) -> float:
    """Seconds of one ``step()``: wall time on CUDA, CPU time of this process on CPU.

    CPU time is what the step costs whatever else runs on the machine (a shared CPU makes
    wall-clock ratios noisy); with several threads it is the sum over threads.
    """
    if device.type == "cuda":  # pragma: no cover - needs a GPU
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        step()
        torch.cuda.synchronize(device)
        return time.perf_counter() - start
    start = time.process_time()
    step()
    return time.process_time() - start


def peak_over_base(step: Callable[[], None], device: torch.device) -> int:  # pragma: no cover
    """Peak CUDA bytes one ``step()`` adds to what is allocated before it (GPU only)."""
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def training_step(loss: Callable[[nn.Module, Tensor], Tensor], model: nn.Module, x: Tensor):
    """A closure running one forward + backward of ``loss(model, x)``."""

    def step() -> None:
        model.zero_grad(set_to_none=True)
        loss(model, x).backward()

    return step


def held_bytes(loss: Callable[[nn.Module, Tensor], Tensor], model: nn.Module, x: Tensor) -> int:
    """Exact activation bytes of one training forward, plus what an offloading wrapper keeps.

    A wrapper with its own saved-tensor hooks (:class:`invseg.bench.peers.Offloaded`) hides
    its tensors from :func:`invseg.engine.activation_bytes` and reports ``device_bytes``.
    """
    return activation_bytes(loss, model, x) + getattr(model, "device_bytes", 0)


def measure(
    configs: list[tuple[str, str, nn.Module]],
    loss: Callable[[nn.Module, Tensor], Tensor],
    x: Tensor,
    repeats: int,
) -> list[Row]:
    """Measure every configuration; step times are taken round-robin over the rows
    (:func:`interleaved_seconds`)."""
    models = [model.to(x.device).train() for _, _, model in configs]
    acts, hosts = [], []
    for model in models:
        acts.append(held_bytes(loss, model, x))
        hosts.append(getattr(model, "host_bytes", 0))
    steps = [training_step(loss, model, x) for model in models]
    seconds = interleaved_seconds(steps, x.device, repeats)
    rows = []
    for (name, memory, model), act, host, step, s in zip(configs, acts, hosts, steps, seconds):
        peak = peak_over_base(step, x.device) if x.device.type == "cuda" else None
        model.zero_grad(set_to_none=True)
        params = sum(p.numel() for p in model.parameters())
        rows.append(Row(name, memory, params, act, s, peak, host))
    return rows


def interleaved_seconds(
    steps: list[Callable[[], None]], device: torch.device, repeats: int
) -> list[float]:
    """Median :func:`step_seconds` of each step, taken round-robin after one warm-up round.

    Interleaving (one step of each in turn, median over rounds) spreads background load and
    allocator state evenly over the steps, so their ratios stay meaningful on a shared CPU.
    """
    times: list[list[float]] = [[] for _ in steps]
    for round_ in range(repeats + 1):  # round 0 is the warm-up
        for i, step in enumerate(steps):
            seconds = step_seconds(step, device)
            if round_:
                times[i].append(seconds)
    return [statistics.median(ts) for ts in times]


def largest_edge(
    make: Callable[[], nn.Module],
    loss: Callable[[nn.Module, Tensor], Tensor],
    device: torch.device,
    edges: tuple[int, ...],
    *,
    channels: int,
    cap_bytes: int,
    budget_s: float | None = None,
) -> tuple[int | None, bool]:  # pragma: no cover - GPU
    """Largest cube edge of ``edges`` (ascending) whose training step fits under ``cap_bytes``.

    The cap is set with ``torch.cuda.set_per_process_memory_fraction`` and lifted afterwards;
    the input is ``1 x channels x edge^3``. Returns :func:`search_edges`'s ``(edge, complete)``.
    """
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, cap_bytes / total), device)
    model = make().to(device).train()

    def fits(edge: int) -> bool:
        x = torch.randn(1, channels, edge, edge, edge, device=device)
        try:
            training_step(loss, model, x)()
            torch.cuda.synchronize(device)
            return True
        except torch.cuda.OutOfMemoryError:
            return False
        finally:
            del x
            model.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()

    try:
        return search_edges(fits, edges, budget_s=budget_s)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)


def search_edges(
    fits: Callable[[int], bool],
    edges: tuple[int, ...],
    *,
    budget_s: float | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[int | None, bool]:
    """The largest of ``edges`` (ascending) up to the first one that does not ``fit``.

    Returns ``(edge, complete)``: ``edge`` is ``None`` when even the first does not fit;
    ``complete`` is ``False`` when the search stopped because ``budget_s`` seconds had passed
    (the true largest edge may then be larger).

    Example:
        >>> search_edges(lambda e: e <= 128, (64, 128, 192))
        (128, True)
        >>> ticks = iter(range(100))  # one second per reading
        >>> search_edges(lambda e: True, (64, 128, 192), budget_s=1, clock=lambda: next(ticks))
        (128, False)
    """
    start, best = clock(), None
    for edge in edges:
        if best is not None and budget_s is not None and clock() - start > budget_s:
            return best, False
        if not fits(edge):
            return best, True
        best = edge
    return best, True


def edge_text(edge: int | None, complete: bool) -> str:
    """``"192^3"``, ``"< 64^3"`` or ``">= 256^3 (time budget)"`` for a :func:`search_edges` result.

    Example:
        >>> edge_text(None, True), edge_text(256, False)
        ('< 64^3', '>= 256^3 (time budget)')
    """
    if edge is None:
        return "< 64^3"
    return f"{edge}^3" if complete else f">= {edge}^3 (time budget)"


def can_plot() -> bool:
    """Whether matplotlib is installed (plots are skipped without it, tables are not)."""
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


class PeakRSS:
    """Sample this process's resident set size in a thread; ``peak`` is the maximum seen."""

    def __init__(self, every: float = 0.002) -> None:
        self.every, self.peak, self._stop = every, 0, threading.Event()
        self.start = self.peak = self.rss()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def rss() -> int:
        """Current RSS in bytes (Linux ``/proc``; 0 elsewhere)."""
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            return 0

    def mark(self) -> None:
        """Start counting from now: ``start`` is the current RSS, the peak so far is dropped.

        Freed heap memory is returned to the system first (glibc ``malloc_trim``), so what the
        process allocates from now on shows in its RSS instead of reusing pages it kept.
        """
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        self.start = self.peak = self.rss()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.peak = max(self.peak, self.rss())

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class FirstWrite(io.TextIOBase):
    """A text stream into ``log`` that calls ``on_first()`` once, before its first write.

    ``invseg train`` prints its first line when the run starts (data read and cached, model and
    optimizer built), so the bench starts its RSS count there (:meth:`PeakRSS.mark`).

    Example:
        >>> calls = []
        >>> out = FirstWrite(io.StringIO(), lambda: calls.append("start"))
        >>> out.write("a"), out.write("b"), calls, out.log.getvalue()
        (1, 1, ['start'], 'ab')
    """

    def __init__(self, log: Any, on_first: Callable[[], None]) -> None:
        super().__init__()
        self.log, self.on_first = log, on_first

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if self.on_first is not None:
            first, self.on_first = self.on_first, None
            first()
        return self.log.write(text)

    def flush(self) -> None:
        self.log.flush()
