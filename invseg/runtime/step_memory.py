r"""The memory of one real training step, measured allocation by allocation.

One training step (forward, ``loss.backward()``, optimiser step) runs under
``torch.profiler.profile(profile_memory=True, record_shapes=True)``, which records every
allocation and free of the measuring device's allocator, and the operator that made it. From
that timeline:

* a **temporary** is an allocation freed before the outermost ``aten::`` operator that made it
  returns (a CPU convolution's column buffer, oneDNN's reordered copies, a cuDNN workspace):
  what it costs depends on the device and on the kernel the operator picks;
* everything else is **graph**: the tensors saved for backward, the output, the gradients
  flowing back, the parameter gradients, the graph that ``invert`` and ``checkpoint`` rebuild
  in backward, the optimiser step's intermediates. Every device holds these bytes.

The step runs twice; the second, measured one starts with the optimiser state allocated, so
``graph_bytes`` and ``peak_bytes`` are the bytes above the weights and the optimiser state.

Example:
    >>> from torch import nn
    >>> m = measure_step_memory(nn.Sequential(nn.Conv3d(1, 2, 1), nn.Sigmoid()), 1, (8, 8, 8))
    >>> m.saved_bytes, m.param_bytes, m.state_bytes  # conv input 2 KiB, sigmoid output 4 KiB
    (6144, 16, 40)
"""

from __future__ import annotations

import bisect
import contextlib
import json
import math
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from invseg.engine.memory import saved_storages

__all__ = [
    "NATIVE_CONV_LIMIT",
    "Moment",
    "StepMemory",
    "amp_context",
    "cpu_temporary",
    "measure_step_memory",
    "saved_bytes",
]

_AMP = {None: None, "bf16": torch.bfloat16, "fp16": torch.float16}
#: PyTorch's CPU float32 convolution takes its native (im2col) kernel, with a column buffer of
#: ``in_channels * prod(kernel) * output voxels`` elements, for batch-1 inputs whose
#: ``N * C * D * H`` is at most this (``use_mkldnn`` in ATen's Convolution.cpp); larger inputs
#: go to oneDNN, whose temporaries are about one copy of the input.
NATIVE_CONV_LIMIT = 20480
_CONV_OPS = ("aten::conv3d", "aten::conv_transpose3d", "aten::convolution_backward")
_ELEM = {"float": 4, "double": 8, "c10::Half": 2, "c10::BFloat16": 2}


@dataclass(frozen=True)
class Moment:
    """The height of one operator that allocates temporaries, at the measured size.

    ``graph`` bytes are alive next to ``temporary`` bytes at the op's highest point. For a 3D
    convolution, ``conv`` holds what decides its CPU kernel and buffers: ``(batch, plane,
    kernel, groups, strided, input bytes, column bytes)`` where ``plane`` is ``N*C*D*H`` of its
    input (see :data:`invseg.runtime.planner.NATIVE_CONV_LIMIT`) and ``column bytes`` what the
    native kernel's column buffer takes at this size (``C_in * prod(kernel) * output voxels``).
    """

    graph: int
    temporary: int
    conv: tuple[int, int, tuple[int, ...], int, bool, int, int] | None = None


@dataclass(frozen=True)
class StepMemory:
    """One measured training step on ``batch`` inputs of spatial ``shape`` (all in bytes).

    ``saved_bytes``: what autograd keeps for backward at the end of forward (each storage once).
    ``graph_bytes``: peak of the step's non-temporary allocations; ``forward_bytes`` and
    ``backward_bytes`` are what forward and backward allocated of what is alive at that peak.
    ``peak_bytes``: peak of all its allocations, temporaries included (this device's kernels).
    ``param_bytes`` and ``state_bytes`` (optimiser state) are alive throughout, not included.
    """

    shape: tuple[int, ...]
    batch: int
    device: str
    amp: str | None
    param_bytes: int
    state_bytes: int
    saved_bytes: int
    graph_bytes: int
    forward_bytes: int
    backward_bytes: int
    peak_bytes: int
    moments: tuple[Moment, ...]


def amp_context(amp: str | None, device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast for ``amp`` in ``(None, "bf16", "fp16")`` on ``device``."""
    if amp not in _AMP:
        raise ValueError(f"amp must be None, 'bf16' or 'fp16', got {amp!r}")
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_AMP[amp])


def _loss(out: Tensor | Sequence[Tensor | None]) -> Tensor:
    parts = [out] if isinstance(out, Tensor) else [t for t in out if t is not None]
    return sum(t.float().mean() for t in parts)  # type: ignore[return-value]


def _input(model: nn.Module, in_channels: int, shape: Sequence[int], batch: int) -> Tensor:
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    return torch.randn((int(batch), int(in_channels), *(int(s) for s in shape)), device=device)


def saved_bytes(
    model: nn.Module,
    in_channels: int,
    shape: Sequence[int],
    *,
    batch: int = 1,
    amp: str | None = None,
) -> tuple[int, int]:
    """Bytes autograd saves for backward in one training forward, and the largest saved tensor.

    Counted by :func:`invseg.engine.memory.saved_storages`: parameters are not counted; each
    storage counts once.
    """
    model.train()
    x = _input(model, in_channels, shape, batch)
    with saved_storages() as saved, amp_context(amp, x.device):
        loss = _loss(model(x))
    del loss
    return sum(saved.values()), max(saved.values(), default=0)


def measure_step_memory(
    model: nn.Module,
    in_channels: int,
    shape: Sequence[int],
    *,
    batch: int = 1,
    amp: str | None = None,
    device: str | torch.device = "cpu",
) -> StepMemory:
    """Run two Adam training steps and measure the second one (see the module docstring).

    Args:
        model: the network; its forward returns a tensor or a tuple of tensors (``None``
            entries ignored); the loss is the mean of every output.
        in_channels: input channels.
        shape: spatial shape of one input.
        batch: batch size.
        amp: ``None``, ``"bf16"`` or ``"fp16"`` autocast.
        device: where the step runs (``"cpu"`` or ``"cuda"``).
    """
    device = torch.device(device)
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-9)

    def step() -> None:
        with amp_context(amp, device):
            loss = _loss(model(_input(model, in_channels, shape, batch)))
        with torch.profiler.record_function("invseg::backward"):
            loss.backward()
        del loss
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    state = sum(t.nbytes for s in opt.state.values() for t in s.values() if torch.is_tensor(t))
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with (
        _quiet_stderr(),
        torch.profiler.profile(activities=activities, profile_memory=True, record_shapes=True) as p,
    ):
        step()
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        p.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)["traceEvents"]
    finally:
        os.unlink(path)
    graph, fwd, bwd, peak, moments = _timeline(events, 1 if device.type == "cuda" else 0)
    saved, _ = saved_bytes(model, in_channels, shape, batch=batch, amp=amp)
    params = sum(t.nbytes for t in model.parameters())
    return StepMemory(
        tuple(int(s) for s in shape), int(batch), device.type, amp, params, state, saved, graph,
        fwd, bwd, peak, moments,
    )  # fmt: skip


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence the profiler's own start/stop lines, which it writes to file descriptor 2."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _outermost_ops(events: list[dict]) -> tuple[list[float], list[dict]]:
    """The outermost ``aten::`` operators, sorted by start.

    The step's threads take turns (the caller runs forward, then waits for backward), so their
    operators form one timeline.
    """
    ops = [e for e in events if e.get("ph") == "X" and e.get("cat") == "cpu_op"]
    ops = [e for e in ops if e["name"].startswith("aten::")]
    ops.sort(key=lambda e: (e["ts"], -e["dur"]))
    outer: list[dict] = []
    for op in ops:
        if outer and op["ts"] + op["dur"] <= outer[-1]["ts"] + outer[-1]["dur"]:
            continue
        outer.append(op)
    return [op["ts"] for op in outer], outer


def _timeline(
    events: list[dict], device_type: int
) -> tuple[int, int, int, int, tuple[Moment, ...]]:
    """Graph peak (and its forward/backward split), total peak and the temporaries' moments."""
    starts, outer = _outermost_ops(events)
    marks = [e for e in events if e.get("name") == "invseg::backward" and e.get("ph") == "X"]
    backward_start = marks[0]["ts"] if marks else math.inf
    mem = [e for e in events if e.get("name") == "[memory]"]
    mem = [e for e in mem if e["args"].get("Device Type", 0) == device_type]
    mem.sort(key=lambda e: e["ts"])
    points: list[tuple[float, int, int, int]] = []  # time, bytes (+/-), op (-1: graph), pass
    open_: dict[int, tuple[int, float, int]] = {}
    for e in mem:
        addr, nbytes = e["args"]["Addr"], e["args"]["Bytes"]
        if nbytes > 0:
            k = bisect.bisect_right(starts, e["ts"]) - 1
            inside = k >= 0 and e["ts"] <= outer[k]["ts"] + outer[k]["dur"]
            open_[addr] = (len(points), e["ts"], k if inside else -1)
            points.append((e["ts"], nbytes, -1, int(e["ts"] >= backward_start)))
        elif addr in open_:
            i, _, k = open_.pop(addr)
            ts, size, _, back = points[i]
            temporary = k >= 0 and e["ts"] <= outer[k]["ts"] + outer[k]["dur"]
            if temporary:
                points[i] = (ts, size, k, back)
            points.append((e["ts"], -size, k if temporary else -1, back))
    return _sweep(points, outer)


def _sweep(
    points: list[tuple[float, int, int, int]], outer: list[dict]
) -> tuple[int, int, int, int, tuple[Moment, ...]]:
    graph = temp = peak_graph = peak = fwd = bwd = 0
    split = [0, 0]
    live: dict[int, int] = {}  # op -> its temporaries alive now
    tops: dict[int, tuple[int, int]] = {}  # op -> (graph, temporaries) at its highest point
    for _, nbytes, k, back in points:
        if k < 0:
            graph += nbytes
            split[back] += nbytes
            if graph > peak_graph:
                peak_graph, fwd, bwd = graph, split[0], split[1]
        else:
            temp += nbytes
            live[k] = live.get(k, 0) + nbytes
            if not live[k]:
                del live[k]
        for op, t in live.items():  # an op's own output may land next to its temporaries
            if graph + t > sum(tops.get(op, (0, 0))):
                tops[op] = (graph, t)
        peak = max(peak, graph + temp)
    moments = tuple(Moment(g, t, _conv_info(outer[k])) for k, (g, t) in sorted(tops.items()))
    return peak_graph, fwd, bwd, max(peak, peak_graph), moments


def _conv_info(op: dict) -> tuple | None:
    """``Moment.conv`` for a 3D convolution op of the trace, else ``None``."""
    if op["name"] not in _CONV_OPS:
        return None
    args = op.get("args", {})
    dims, concrete = args.get("Input Dims", []), args.get("Concrete Inputs", [])
    backward = op["name"] == "aten::convolution_backward"
    x, w = (dims[1], dims[2]) if backward else (dims[0], dims[1])
    if len(x) != 5 or len(w) != 5:
        return None

    def ints(i: int) -> list[int]:
        return [int(v) for v in re.findall(r"-?\d+", concrete[i])] if i < len(concrete) else [1]

    if backward:
        stride, transposed, groups = ints(4), concrete[7] == "True", ints(9)[0]
    else:
        transposed = op["name"] == "aten::conv_transpose3d"
        stride, groups = ints(3), ints(6)[0]
    elem = _ELEM.get(args.get("Input type", ["float"])[1 if backward else 0], 4)
    kernel = tuple(w[2:])
    in_bytes = math.prod(x) * elem
    spatial = math.prod(x[2:])
    if transposed:  # column buffer: C_out * prod(kernel) * input voxels
        columns = w[1] * groups * math.prod(kernel) * spatial * elem
    else:  # C_in * prod(kernel) * output voxels
        columns = w[1] * groups * math.prod(kernel) * spatial // math.prod(stride) * elem
    strided = any(s != 1 for s in stride)
    return (x[0], x[0] * x[1] * x[2] * x[3], kernel, int(groups), strided, in_bytes, columns)


def _native(n: int, plane: float, kernel: tuple[int, ...], groups: int, strided: bool) -> bool:
    """Whether PyTorch's CPU float32 convolution takes its native kernel (see above)."""
    one = kernel[-1] == 1 and kernel[-2] == 1
    first = strided or n >= 16 or not one or torch.get_num_threads() > 1
    big = kernel[-1] > 3 and kernel[-2] > 3
    return not (first and (groups > 1 or big or n > 1 or plane > NATIVE_CONV_LIMIT))


def cpu_temporary(m: Moment, step: StepMemory, shape: Sequence[int], batch: int) -> float:
    """Temporary bytes of moment ``m`` (measured in ``step``) at ``batch x shape``.

    Measured temporaries scale with the voxels, except where a 3D convolution switches
    between PyTorch's native CPU kernel (column buffer) and oneDNN (about one copy of the input)
    between the measured and the target size (:data:`NATIVE_CONV_LIMIT`).
    """
    ratio = batch * math.prod(shape) / (step.batch * math.prod(step.shape))
    if m.conv is None or step.device != "cpu" or step.amp is not None:
        return m.temporary * ratio
    n, plane, kernel, groups, strided, in_bytes, columns = m.conv
    scale = batch / n * shape[0] * shape[1] / (step.shape[0] * step.shape[1])
    was = _native(n, plane, kernel, groups, strided)
    now = _native(batch, plane * scale, kernel, groups, strided)
    if was == now:
        return m.temporary * ratio
    kernel_part = columns if was else min(m.temporary, in_bytes)
    other = max(m.temporary - kernel_part, 0) * ratio
    per_sample = math.prod(shape) / math.prod(step.shape)
    return other + (columns * per_sample if now else in_bytes * ratio)
