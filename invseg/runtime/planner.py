r"""Memory planner: the largest crop or batch that trains within a memory budget.

Task-agnostic: it takes a ``build_fn(size) -> nn.Module`` whose forward returns a tensor or a
tuple of tensors (``None`` entries ignored) and knows nothing of what the model segments.

Model of one training step (forward, backward, optimiser step), all in bytes:

.. math::
    M(V) = \underbrace{P}_{\text{params}} + \underbrace{P}_{\text{grads}}
    + \underbrace{2P}_{\text{Adam}} + \underbrace{a + bV}_{\text{saved activations}}
    + \underbrace{2(c + dV)}_{\text{backward transient}}
    + \underbrace{W}_{\text{conv columns}} + O

where :math:`V` is the number of input voxels times the batch. :math:`a + bV` are the exact bytes
that autograd saves for backward (counted with :func:`torch.autograd.graph.saved_tensors_hooks`,
each storage once), measured at two small cubes and checked at a third; :math:`c + dV` is the
largest single saved tensor: during backward the gradient of that tensor and of its input are
alive next to the remaining activations. :math:`W` is the largest convolution column
buffer on PyTorch's native CPU path, beyond what is saved when it runs (see
:data:`NATIVE_CONV_LIMIT`; 0 on GPU). :math:`O` is :data:`CUDA_OVERHEAD_BYTES` on a GPU (the
CUDA context, cuDNN/cuBLAS workspaces and caching-allocator slack), 0 on CPU.

Known gap: the graph of the block that ``invert``/``checkpoint`` recompute in backward is not
modelled: on CPU, PartiallyInvResUNet (base 8, 40^3) peaks at 46.4 MB RSS vs 36.9 MB predicted.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn
from torch.autograd.graph import saved_tensors_hooks

__all__ = [
    "CUDA_OVERHEAD_BYTES",
    "ActivationFit",
    "PlanResult",
    "fit_activations",
    "largest_cube",
    "max_batch",
    "measure_step",
    "parse_bytes",
    "plan_model",
]

#: GPU overhead: CUDA context (~0.5 GiB), cuDNN/cuBLAS workspaces, allocator fragmentation.
CUDA_OVERHEAD_BYTES = 1 << 30
_UNITS = {"": 1, "B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12, "KIB": 2**10, "MIB": 2**20}
_UNITS |= {"GIB": 2**30, "TIB": 2**40}
_AMP = {None: None, "bf16": torch.bfloat16, "fp16": torch.float16}

BuildFn = Callable[[int], nn.Module]
_CONVS = (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)


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


def _amp_context(amp: str | None, device: torch.device) -> contextlib.AbstractContextManager:
    if amp not in _AMP:
        raise ValueError(f"amp must be None, 'bf16' or 'fp16', got {amp!r}")
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_AMP[amp])


def _loss(out: Tensor | Sequence[Tensor | None]) -> Tensor:
    parts = [out] if isinstance(out, Tensor) else [t for t in out if t is not None]
    return sum(t.float().mean() for t in parts)  # type: ignore[return-value]


#: PyTorch's CPU convolution takes its native (im2col) path, with a column buffer of
#: ``in_channels * prod(kernel) * output voxels`` elements, for fp32 batch-1 inputs whose
#: ``N * C * D * H`` is at most this (``ConvParams::use_mkldnn`` in ATen's Convolution.cpp);
#: larger inputs go to oneDNN, which needs no such buffer.
NATIVE_CONV_LIMIT = 20480

#: A convolution: (column bytes, saved bytes when it ran, both per input voxel; its
#: ``C_in * D_in * H_in`` per input ``D * H``).
Conv = tuple[float, float, float]


def measure_step(
    model: nn.Module,
    in_channels: int,
    size: int | Sequence[int],
    *,
    batch: int = 1,
    amp: str | None = None,
    device: str | torch.device = "cpu",
) -> tuple[int, int, tuple[Conv, ...]]:
    """Bytes saved for backward by one training forward, the largest one, and the convolutions.

    Train mode, random input ``(batch, in_channels, *size)``, loss = mean of every output;
    parameters are not counted. Convolutions: see :data:`Conv` and :data:`NATIVE_CONV_LIMIT`.

    Example:
        >>> net = nn.Sequential(nn.Conv3d(1, 2, 3, padding=1), nn.ReLU())
        >>> measure_step(net, 1, 8)  # conv input 2 KiB, ReLU output 4 KiB; 27 x 4 B columns
        (6144, 4096, ((108.0, 4.0, 1.0),))
    """
    device = torch.device(device)
    shape = (int(batch), int(in_channels), *((int(size),) * 3 if isinstance(size, int) else size))
    storages: dict[int, int] = {}
    convs: set[Conv] = set()
    voxels = math.prod(shape[2:]) * shape[0]

    def conv_hook(mod: nn.Module, args: tuple, out: Tensor) -> None:
        if not isinstance(out, Tensor) or math.prod(mod.kernel_size) == 1 or mod.groups > 1:
            return
        inp = args[0]
        src = inp if mod.transposed else out
        chans = mod.out_channels if mod.transposed else mod.in_channels
        elems = chans * math.prod(mod.kernel_size) * src[0, 0].numel() * src.shape[0]
        plane = inp.shape[1] * inp.shape[2] * inp.shape[3] / (shape[2] * shape[3])
        before = sum(storages.values()) / voxels
        convs.add((elems * out.element_size() / voxels, before, plane))

    def pack(t: Tensor) -> Tensor:
        if not (isinstance(t, nn.Parameter) or (t.is_leaf and t.requires_grad)):
            s = t.untyped_storage()
            storages.setdefault(s.data_ptr(), s.nbytes())
        return t

    model.to(device).train()
    x = torch.randn(shape, device=device)
    handles = [m.register_forward_hook(conv_hook) for m in model.modules() if isinstance(m, _CONVS)]
    try:
        with saved_tensors_hooks(pack, lambda t: t), _amp_context(amp, device):
            loss = _loss(model(x))
    finally:
        for h in handles:
            h.remove()
    del loss
    return sum(storages.values()), max(storages.values(), default=0), tuple(sorted(convs))


@dataclass(frozen=True)
class ActivationFit:
    """Lines in voxels for the saved bytes and the largest saved tensor; the convolutions."""

    intercept: float
    slope: float
    big0: float
    big1: float
    convs: tuple[Conv, ...]
    native: bool
    sizes: tuple[int, ...]
    measured: tuple[int, ...]
    extrapolation_error: float

    def activations(self, voxels: float) -> int:
        """Saved-for-backward bytes at ``voxels`` (input voxels times batch)."""
        return int(self.intercept + self.slope * voxels)

    def transient(self, voxels: float) -> int:
        """Backward transient: two buffers the size of the largest saved tensor."""
        return int(2 * (self.big0 + self.big1 * voxels))

    def workspace(self, shape: Sequence[int], batch: int = 1) -> int:
        """Peak beyond the saved activations from a CPU column buffer (0 on GPU, AMP, batch > 1).

        A convolution's column buffer coexists with what was saved up to it (in forward, and
        again in backward, where the activations are freed in reverse order).
        """
        if not self.native or batch != 1:
            return 0
        d, h, w = (int(v) for v in shape)
        peaks = [c + b for c, b, plane in self.convs if plane * d * h <= NATIVE_CONV_LIMIT]
        voxels = d * h * w
        return int(max(max(peaks, default=0.0) * voxels - self.activations(voxels), 0))


def _line(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    slope = (y[1] - y[0]) / (x[1] - x[0])
    return y[0] - slope * x[0], slope


def fit_activations(
    build_fn: BuildFn,
    in_channels: int,
    *,
    sizes: Sequence[int],
    batch: int = 1,
    amp: str | None = None,
    device: str | torch.device = "cpu",
) -> ActivationFit:
    """Measure at three cubes, fit a line in voxels through the two smallest, check the third.

    ``extrapolation_error``: relative error of that line at the third size; the returned line
    goes through the two largest sizes (closest to what is extrapolated).

    Example:
        >>> fit = fit_activations(lambda s: nn.Conv3d(1, 1, 1), 1, sizes=(8, 12, 16))
        >>> fit.slope, fit.extrapolation_error  # saves its 4-byte input per voxel
        (4.0, 0.0)
    """
    if len(sizes) != 3 or sorted(set(sizes)) != list(sizes):
        raise ValueError(f"sizes must be 3 increasing cube sizes, got {tuple(sizes)}")
    totals, bigs = [], []
    for s in sizes:
        total, big, convs = measure_step(
            build_fn(s), in_channels, s, batch=batch, amp=amp, device=device
        )
        totals.append(total)
        bigs.append(big)
    vox = [batch * s**3 for s in sizes]
    a, b = _line(vox[:2], totals[:2])
    predicted = a + b * vox[2]
    error = abs(predicted - totals[2]) / max(totals[2], 1)
    a, b = _line(vox[1:], totals[1:])
    c, d = _line(vox[1:], bigs[1:])
    native = torch.device(device).type == "cpu" and amp is None
    return ActivationFit(a, b, c, d, convs, native, tuple(sizes), tuple(totals), error)


@dataclass(frozen=True)
class PlanResult:
    """Largest cube within a budget (``None`` if none fits) and the byte counts there."""

    max_cube: int | None
    batch: int
    budget_bytes: int
    activation_bytes: int
    transient_bytes: int
    workspace_bytes: int
    param_bytes: int
    optimizer_bytes: int
    overhead_bytes: int
    total_bytes: int
    multiple: int
    fit: ActivationFit


def param_bytes(model: nn.Module) -> int:
    """Bytes of the parameters (float32 master weights under AMP too)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def step_bytes(
    fit: ActivationFit,
    params: int,
    shape: int | Sequence[int],
    *,
    batch: int = 1,
    overhead: int = 0,
) -> dict[str, int]:
    """Byte counts of one training step on ``batch`` inputs of spatial ``shape``."""
    shape3 = (int(shape),) * 3 if isinstance(shape, int) else tuple(int(v) for v in shape)
    voxels = batch * math.prod(shape3)
    parts = {
        "activation_bytes": fit.activations(voxels),
        "transient_bytes": fit.transient(voxels),
        "workspace_bytes": fit.workspace(shape3, batch),
        "param_bytes": 2 * params,  # weights + gradients
        "optimizer_bytes": 2 * params,  # Adam's two moments
        "overhead_bytes": overhead,
    }
    parts["total_bytes"] = sum(parts.values())
    return parts


def _meta_params(build_fn: BuildFn, size: int) -> int:
    with torch.device("meta"):
        return param_bytes(build_fn(size))


def default_sizes(multiple: int) -> tuple[int, int, int]:
    """Three measurement cubes: multiples of ``multiple``, at least 16 and ``2 * multiple``.

    Example:
        >>> default_sizes(8), default_sizes(32)
        ((16, 24, 32), (64, 96, 128))
    """
    k = max(2 if multiple >= 16 else 1, math.ceil(16 / multiple))
    return (k * multiple, (k + 1) * multiple, (k + 2) * multiple)


def plan_model(
    build_fn: BuildFn,
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
        build_fn: ``size -> model`` for a training cube of that size (VAE nets fix their
            input size at construction; other nets ignore it).
        in_channels: input channels.
        budget_bytes: the memory budget.
        batch: batch size.
        amp: ``None``, ``"bf16"`` or ``"fp16"`` autocast while measuring.
        device: where to measure (CPU gives exact bytes too).
        multiple: granularity of the cube (the net's down-sampling factor, at least 8).
        overhead_bytes: fixed overhead; default :data:`CUDA_OVERHEAD_BYTES` on CUDA, else 0.
        sizes: the three measurement cubes (default :func:`default_sizes`).
        limit: largest cube considered.
        target: device type the plan is for (default ``device``): CPU column buffers count
            only for a CPU target.

    Example:
        >>> r = plan_model(lambda s: nn.Conv3d(1, 1, 1), 1, budget_bytes=4 * 32**3 + 100)
        >>> r.max_cube, r.activation_bytes
        (16, 16384)
    """
    device = torch.device(device)
    multiple = max(int(multiple), 8)
    if overhead_bytes is None:
        overhead_bytes = CUDA_OVERHEAD_BYTES if device.type == "cuda" else 0
    fit = fit_activations(
        build_fn, in_channels, sizes=sizes or default_sizes(multiple), batch=batch, amp=amp,
        device=device,
    )  # fmt: skip
    if target is not None:
        fit = replace(fit, native=target == "cpu" and amp is None)
    return largest_cube(
        fit, lambda s: _meta_params(build_fn, s), budget_bytes=budget_bytes, batch=batch,
        multiple=multiple, overhead=overhead_bytes, limit=limit,
    )  # fmt: skip


def largest_cube(
    fit: ActivationFit,
    params_fn: Callable[[int], int],
    *,
    budget_bytes: int,
    batch: int = 1,
    multiple: int = 8,
    overhead: int = 0,
    limit: int = 1024,
) -> PlanResult:
    """The largest cube (multiple of ``multiple``) that fits, from an existing fit.

    ``params_fn(cube)`` gives the parameter bytes of the net built for that cube.
    """
    per_vox = fit.slope + 2 * fit.big1
    free = budget_bytes - overhead - 4 * params_fn(fit.sizes[-1])
    cube = int((max(free, 0) / max(per_vox, 1e-9) / batch) ** (1 / 3)) // multiple * multiple
    cube = min(cube + multiple, limit // multiple * multiple)
    while cube >= multiple:
        parts = step_bytes(fit, params_fn(cube), cube, batch=batch, overhead=overhead)
        if parts["total_bytes"] <= budget_bytes:
            return PlanResult(cube, batch, budget_bytes, multiple=multiple, fit=fit, **parts)
        cube -= multiple
    parts = step_bytes(fit, params_fn(multiple), multiple, batch=batch, overhead=overhead)
    return PlanResult(None, batch, budget_bytes, multiple=multiple, fit=fit, **parts)


def max_batch(
    fit: ActivationFit, params: int, shape: Sequence[int], *, budget_bytes: int, overhead: int = 0
) -> int:
    """Largest batch of volumes of ``shape`` (padded as the net needs) within the budget.

    ``fit`` must come from measurements at batch 1. Returns 0 when even batch 1 does not fit.

    Example:
        >>> fit = ActivationFit(0.0, 4.0, 0.0, 0.0, (), False, (8, 12, 16), (0, 0, 0), 0.0)
        >>> max_batch(fit, 0, (10, 10, 10), budget_bytes=8000)
        2
    """
    batch = 0
    while batch < 4096 and (
        step_bytes(fit, params, shape, batch=batch + 1, overhead=overhead)["total_bytes"]
        <= budget_bytes
    ):
        batch += 1
    return batch
