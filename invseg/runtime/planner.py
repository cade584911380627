r"""Memory planner: the peak of one training step at any input size, and what fits a budget.

Task-agnostic: it takes ``build_fn(shape) -> nn.Module`` (forward returns a tensor or a tuple
of tensors, ``None`` entries ignored). One training step (forward, backward, Adam step) on
:math:`V` voxels (input voxels times the batch) peaks at, in bytes,

.. math::
    \mathrm{peak}(V) = P + S + G(V) + T(V) + O

* :math:`P` weights, :math:`S` optimiser state (measured: Adam's two moments);
* :math:`G(V) = g_0 + g_1 V`, what every device holds above those: the peak of every tensor
  the step allocates that is no operator's temporary (saved activations, gradients, the graph
  that ``invert`` and ``checkpoint`` rebuild in backward), **measured** on real steps
  (:func:`~invseg.runtime.step_memory.measure_step_memory`) at three sizes; the line goes
  through the two largest, ``graph_error`` is the error at the largest of the line through
  the two smallest;
* :math:`T(V)`, per-op temporaries (device-specific). Target ``"cpu"``: the measured timeline,
  scaled, with each 3D convolution's buffers for the kernel PyTorch picks at the target
  (:func:`~invseg.runtime.step_memory.cpu_temporary`; exact on :func:`slab_shapes`);
  ``cpu_error`` as for :math:`G`. Target ``"cuda"``: 0, cuDNN workspaces are part of :math:`O`;
* :math:`O`: :data:`CUDA_OVERHEAD_BYTES` on a GPU target, else 0.

Sizes must be large enough that fixed buffers do not bend the line (:func:`default_sizes`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from invseg.runtime.step_memory import (
    StepMemory,
    cpu_temporary,
    measure_step_memory,
    saved_bytes,
)

__all__ = [
    "CUDA_OVERHEAD_BYTES",
    "TARGETS",
    "PeakFit",
    "PlanResult",
    "default_sizes",
    "fit_peak",
    "largest_cube",
    "max_batch",
    "measure_step",
    "param_bytes",
    "parse_bytes",
    "plan_model",
    "slab_shapes",
    "step_bytes",
]

#: GPU overhead: CUDA context (~0.5 GiB), cuDNN/cuBLAS workspaces, allocator fragmentation.
CUDA_OVERHEAD_BYTES = 1 << 30
_UNITS = {"": 1, "B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12, "KIB": 2**10, "MIB": 2**20}
_UNITS |= {"GIB": 2**30, "TIB": 2**40}
TARGETS = ("cpu", "cuda")

Shape = tuple[int, int, int]
BuildFn = Callable[[Shape], nn.Module]


def parse_bytes(text: str | int | float) -> int:
    """Parse ``"12GB"``, ``"512MiB"``, ``"1.5GiB"`` or a number of bytes.

    Example:
        >>> parse_bytes("12GB"), parse_bytes("1.5 KiB"), parse_bytes(100)
        (12000000000, 1536, 100)
    """
    if isinstance(text, int | float):
        value, unit = float(text), ""
    else:
        m = re.fullmatch(
            r"([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)([KMGT]?I?B?)",
            str(text).strip().upper().replace(" ", ""),
        )
        value, unit = (float(m[1]), m[2]) if m else (math.nan, "")
        if unit in ("K", "M", "G", "T"):
            unit += "B"
    if unit not in _UNITS or not value > 0:
        raise ValueError(f"memory size must look like 12GB, 512MiB or a byte count, got {text!r}")
    return int(value * _UNITS[unit])


def measure_step(
    model: nn.Module,
    in_channels: int,
    size: int | Sequence[int],
    *,
    batch: int = 1,
    amp: str | None = None,
    device: str | torch.device = "cpu",
) -> tuple[int, int]:
    """Bytes saved for backward by one training forward, and the largest saved tensor.

    Example:
        >>> net = nn.Sequential(nn.Conv3d(1, 2, 3, padding=1), nn.ReLU())
        >>> measure_step(net, 1, 8)  # conv input 2 KiB, ReLU output 4 KiB
        (6144, 4096)
    """
    model.to(device)
    return saved_bytes(model, in_channels, _shape(size), batch=batch, amp=amp)


def param_bytes(model: nn.Module) -> int:
    """Bytes of the parameters (float32 master weights under AMP too)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _shape(size: int | Sequence[int]) -> Shape:
    shape = (int(size),) * 3 if isinstance(size, int) else tuple(int(v) for v in size)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be 3 positive sizes (D, H, W), got {size!r}")
    return shape  # type: ignore[return-value]


def _line(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    return y[0] - (y[1] - y[0]) / (x[1] - x[0]) * x[0], (y[1] - y[0]) / (x[1] - x[0])


@dataclass(frozen=True)
class PeakFit:
    """Measured steps at three sizes and the lines in voxels through the two largest.

    ``graph``, ``forward`` and ``saved`` are ``(intercept, slope)`` lines for
    :attr:`StepMemory.graph_bytes`, :attr:`StepMemory.forward_bytes` and
    :attr:`StepMemory.saved_bytes`; ``graph_error`` and ``cpu_error``: relative error at the
    largest size of the prediction from the two smallest (graph; CPU peak with temporaries).
    """

    shapes: tuple[Shape, ...]
    steps: tuple[StepMemory, ...]
    graph: tuple[float, float]
    forward: tuple[float, float]
    saved: tuple[float, float]
    graph_error: float = 0.0
    cpu_error: float = 0.0

    def graph_bytes(self, voxels: float) -> int:
        """What every device holds above weights and optimiser state at ``voxels``."""
        return int(self.graph[0] + self.graph[1] * voxels)

    def cpu_bytes(self, shape: Sequence[int], batch: int = 1) -> int:
        """The CPU peak above weights and optimiser state, temporaries included."""
        shape3 = _shape(shape)
        graph = self.graph_bytes(batch * math.prod(shape3))
        step = self.steps[-1]
        scale = graph / max(step.graph_bytes, 1)
        heights = (m.graph * scale + cpu_temporary(m, step, shape3, batch) for m in step.moments)
        return int(max(graph, *heights))

    def error(self, target: str) -> float:
        """Extrapolation error at the largest measured size for ``target``."""
        return self.cpu_error if target == "cpu" else self.graph_error


def _fit(steps: Sequence[StepMemory]) -> PeakFit:
    vox = [s.batch * math.prod(s.shape) for s in steps]
    lines = [
        _line(vox, [getattr(s, key) for s in steps])
        for key in ("graph_bytes", "forward_bytes", "saved_bytes")
    ]
    return PeakFit(tuple(s.shape for s in steps), tuple(steps), *lines)


def fit_peak(
    build_fn: BuildFn,
    in_channels: int,
    *,
    sizes: Sequence[int | Sequence[int]],
    batch: int = 1,
    amp: str | None = None,
    device: str | torch.device = "cpu",
) -> PeakFit:
    """Measure one training step at three increasing sizes and fit the lines in voxels.

    Args:
        build_fn: ``(D, H, W) -> model`` for that input shape.
        in_channels: input channels.
        sizes: three cube sides or ``(D, H, W)`` shapes, increasing in voxels
            (:func:`default_sizes`, or :func:`slab_shapes` for an exact CPU plan).
        batch: batch size of every measured step.
        amp: ``None``, ``"bf16"`` or ``"fp16"`` autocast.
        device: where to measure.

    Example:
        >>> fit = fit_peak(lambda s: nn.Conv3d(1, 1, 1), 1, sizes=(8, 12, 16))
        >>> fit.saved[1], fit.graph_error  # saves its 4-byte input per voxel
        (4.0, 0.0)
    """
    shapes = [_shape(s) for s in sizes]
    vox = [math.prod(s) for s in shapes]
    if len(shapes) != 3 or sorted(set(vox)) != vox:
        raise ValueError(f"sizes must be 3 sizes increasing in voxels, got {list(sizes)}")
    steps = [
        measure_step_memory(build_fn(s), in_channels, s, batch=batch, amp=amp, device=device)
        for s in shapes
    ]
    check, last = _fit(steps[:2]), steps[2]
    graph_error = abs(check.graph_bytes(batch * vox[2]) - last.graph_bytes)
    cpu_error = abs(check.cpu_bytes(last.shape, batch) - last.peak_bytes)
    fit = _fit(steps[1:])
    return PeakFit(
        tuple(shapes), tuple(steps), fit.graph, fit.forward, fit.saved,
        graph_error / max(last.graph_bytes, 1), cpu_error / max(last.peak_bytes, 1),
    )  # fmt: skip


def default_sizes(multiple: int) -> tuple[int, int, int]:
    """Three measurement cubes: consecutive multiples of ``multiple``, the first at least 32.

    Example:
        >>> default_sizes(8), default_sizes(16), default_sizes(32)
        ((32, 40, 48), (32, 48, 64), (64, 96, 128))
    """
    k = max(2, math.ceil(32 / multiple))
    return (k * multiple, (k + 1) * multiple, (k + 2) * multiple)


def slab_shapes(shape: Sequence[int], multiple: int) -> tuple[Shape, Shape, Shape]:
    """Three measurement slabs for an exact CPU plan at ``shape``: its D x H, thin in W.

    PyTorch picks a CPU convolution's kernel from ``N * C * D * H`` (see
    :data:`~invseg.runtime.step_memory.NATIVE_CONV_LIMIT`), never from W: on slabs of the
    target's D x H every convolution runs the kernel it will run at the target, and every
    tensor is proportional to W, so the line in voxels holds up to the target.

    Example:
        >>> slab_shapes((240, 240, 155), 8)
        ((240, 240, 8), (240, 240, 16), (240, 240, 24))
    """
    d, h, _ = _shape(shape)
    return tuple((d, h, k * multiple) for k in (1, 2, 3))  # type: ignore[return-value]


def step_bytes(
    fit: PeakFit,
    params: int,
    shape: int | Sequence[int],
    *,
    batch: int = 1,
    target: str = "cuda",
    overhead: int | None = None,
) -> dict[str, int]:
    """``peak_bytes`` of one training step and its parts (each in bytes).

    ``param_bytes`` (weights) + ``optimizer_bytes`` + ``graph_bytes`` (every device: of it,
    ``forward_bytes`` were allocated by forward and ``backward_bytes`` by backward) +
    ``temporary_bytes`` (per-op, this target) + ``overhead_bytes`` = ``peak_bytes``.
    ``saved_bytes`` (what forward keeps for backward) is for reference. ``params`` are the weight
    bytes of the net built for ``shape``; ``overhead`` defaults to the target's.
    """
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    shape3, step = _shape(shape), fit.steps[-1]
    voxels = batch * math.prod(shape3)
    graph = fit.graph_bytes(voxels)
    forward = min(int(fit.forward[0] + fit.forward[1] * voxels), graph)
    default_overhead = CUDA_OVERHEAD_BYTES if target == "cuda" else 0
    parts = {
        "param_bytes": int(params),
        "optimizer_bytes": int(step.state_bytes * params / max(step.param_bytes, 1)),
        "graph_bytes": graph,
        "temporary_bytes": fit.cpu_bytes(shape3, batch) - graph if target == "cpu" else 0,
        "overhead_bytes": default_overhead if overhead is None else int(overhead),
    }
    parts["peak_bytes"] = sum(parts.values())
    parts |= {"forward_bytes": forward, "backward_bytes": graph - forward}
    parts["saved_bytes"] = int(fit.saved[0] + fit.saved[1] * voxels)
    return parts


@dataclass(frozen=True)
class PlanResult:
    """Largest cube within a budget (``None`` if none fits) and the step's bytes there."""

    max_cube: int | None
    batch: int
    budget_bytes: int
    multiple: int
    target: str
    fit: PeakFit
    parts: dict[str, int] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        """``peak_bytes`` at ``max_cube`` (at the smallest cube when none fits)."""
        return self.parts["peak_bytes"]


def largest_cube(
    fit: PeakFit,
    params_fn: Callable[[int], int],
    *,
    budget_bytes: int,
    batch: int = 1,
    multiple: int = 8,
    target: str = "cuda",
    overhead: int | None = None,
    limit: int = 1024,
) -> PlanResult:
    """The largest cube (a multiple of ``multiple``) whose step fits, from an existing fit.

    ``params_fn(cube)`` gives the weight bytes of the net built for that cube.
    """

    def parts(cube: int) -> dict[str, int]:
        return step_bytes(fit, params_fn(cube), cube, batch=batch, target=target, overhead=overhead)

    lo, hi = 0, limit // multiple  # in multiples; peak grows with the cube
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if parts(mid * multiple)["peak_bytes"] <= budget_bytes else (lo, mid - 1)
    cube = lo * multiple or None
    at = parts(cube or multiple)
    return PlanResult(cube, batch, budget_bytes, multiple, target, fit, at)


def max_batch(
    fit: PeakFit,
    params: int,
    shape: Sequence[int],
    *,
    budget_bytes: int,
    target: str = "cuda",
    overhead: int | None = None,
) -> int:
    """Largest batch of volumes of ``shape`` (padded as the net needs) within the budget.

    Returns 0 when even batch 1 does not fit.
    """

    def peak(b: int) -> int:
        return step_bytes(fit, params, shape, batch=b, target=target, overhead=overhead)[
            "peak_bytes"
        ]

    batch = 0
    while batch < 4096 and peak(batch + 1) <= budget_bytes:
        batch += 1
    return batch


def plan_model(
    build_fn: Callable[[int], nn.Module],
    in_channels: int,
    *,
    budget_bytes: int,
    batch: int = 1,
    amp: str | None = None,
    device: str | torch.device = "cpu",
    multiple: int = 8,
    overhead_bytes: int | None = None,
    sizes: Sequence[int] | None = None,
    limit: int = 1024,
    target: str | None = None,
) -> PlanResult:
    """The largest cube (a multiple of ``multiple``) whose training step fits ``budget_bytes``.

    Args:
        build_fn: ``cube -> model`` for a training cube of that size (VAE nets fix their
            input size at construction; other nets ignore it).
        in_channels: input channels.
        budget_bytes: the memory budget.
        batch: batch size.
        amp: ``None``, ``"bf16"`` or ``"fp16"`` autocast while measuring.
        device: where to measure.
        multiple: granularity of the cube (the net's down-sampling factor, at least 8).
        overhead_bytes: fixed overhead; default :data:`CUDA_OVERHEAD_BYTES` for a CUDA target.
        sizes: the three measurement cubes (default :func:`default_sizes`).
        limit: largest cube considered.
        target: device type the plan is for (default ``device``'s).

    Example:
        >>> r = plan_model(lambda s: nn.Conv3d(1, 1, 1), 1, budget_bytes=8 * 32**3 + 100)
        >>> r.max_cube, r.parts["graph_bytes"]  # input and output: 8 bytes a voxel
        (32, 262160)
    """
    multiple = max(int(multiple), 8)
    target = target or torch.device(device).type
    fit = fit_peak(
        lambda shape: build_fn(shape[0]), in_channels, sizes=sizes or default_sizes(multiple),
        batch=batch, amp=amp, device=device,
    )  # fmt: skip

    def params(cube: int) -> int:
        with torch.device("meta"):
            return param_bytes(build_fn(cube))

    return largest_cube(
        fit, params, budget_bytes=budget_bytes, batch=batch, multiple=multiple, target=target,
        overhead=overhead_bytes, limit=limit,
    )  # fmt: skip
