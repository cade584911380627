"""What a user would pick instead of invertibility: the memory-for-compute peers, as wrappers.

Every wrapper shares the weights of the model it wraps, so a row of a benchmark table differs
from its twin only in how the activations are kept:

* :class:`LevelCheckpoint` with ``policy="full"``: ``torch.utils.checkpoint`` (non-reentrant)
  around every level of a :class:`~invseg.nets.UNet3D` (each encoder stage, the bottom, each
  decoder stage with its up-sampling and skip addition); only level inputs are kept;
* :class:`LevelCheckpoint` with ``policy="selective"``: selective activation checkpointing
  (``create_selective_checkpoint_contexts``): inside each level the outputs of convolutions
  and matrix products are saved, the rest (norms, activations, additions) is recomputed;
* :class:`BlockCheckpoint`: the same two policies around each block of a chain;
* :class:`Checkpointed`: the same two policies around one module while it trains (how the
  ``unet3d_ckpt`` entry of :mod:`invseg.bench.models` wraps each stage);
* :class:`Offloaded`: ``torch.autograd.graph.save_on_cpu`` (pinned host memory on CUDA): all
  saved tensors move to host memory and come back in backward. On a CPU nothing moves, so the
  bytes held are the twin's (:attr:`Offloaded.device_bytes`);
* :func:`monai_unet`: MONAI's ``UNet`` and its ``CheckpointUNet`` (torch checkpoints nested
  per sub-block) with the twin's channels.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.graph import save_on_cpu, saved_tensors_hooks
from torch.utils.checkpoint import checkpoint

from invseg._choices import check_option

__all__ = [
    "POLICIES",
    "SAVED_OPS",
    "BlockCheckpoint",
    "Checkpointed",
    "LevelCheckpoint",
    "Offloaded",
    "monai_unet",
    "sac_context",
    "summary",
    "unet_peers",
]

POLICIES = ("full", "selective")
_HOOKS_KW = "respect_saved_tensors_hooks" in inspect.signature(checkpoint).parameters


def _saved_ops() -> frozenset:
    aten = torch.ops.aten
    names = ("convolution", "_convolution", "mm", "bmm", "addmm", "baddbmm", "matmul")
    return frozenset(getattr(aten, n).default for n in names if hasattr(aten, n))


#: ATen ops whose outputs selective checkpointing keeps (convolutions and matrix products).
SAVED_OPS = _saved_ops()


def _policy(ctx: Any, op: Any, *args: Any, **kwargs: Any):
    from torch.utils.checkpoint import CheckpointPolicy

    return CheckpointPolicy.MUST_SAVE if op in SAVED_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def sac_context():
    """The ``context_fn`` of selective checkpointing: save conv/matmul outputs, recompute rest."""
    from torch.utils.checkpoint import create_selective_checkpoint_contexts

    return create_selective_checkpoint_contexts(_policy)


class LevelCheckpoint(nn.Module):
    """A :class:`~invseg.nets.UNet3D` (or any ``ResUNetBase``) checkpointed level by level.

    Args:
        net: the U-Net; its modules and weights are used as they are (not copied).
        policy: ``"full"`` (plain non-reentrant checkpoint) or ``"selective"``.

    Shape:
        ``(B, in_channels, D, H, W)`` with each spatial size a multiple of
        ``2**(len(channels) - 1)`` (no padding here).

    Example:
        >>> from invseg.nets import UNet3D
        >>> net = UNet3D(3, 1, 2, channels=(4, 8))
        >>> x = torch.randn(1, 1, 8, 8, 8)
        >>> torch.allclose(LevelCheckpoint(net)(x), net(x), atol=1e-6)
        True
    """

    def __init__(self, net: nn.Module, *, policy: str = "full") -> None:
        super().__init__()
        self.net = net
        self.policy = check_option("policy", policy, POLICIES)

    def _ckpt(self, fn: Callable[..., Tensor], *args: Tensor) -> Tensor:
        return _checkpointed(fn, *args, policy=self.policy)

    def forward(self, x: Tensor) -> Tensor:
        net = self.net
        if any(s % net.multiple for s in x.shape[2:]):
            raise ValueError(
                f"LevelCheckpoint needs spatial sizes that are multiples of {net.multiple}, got "
                f"{tuple(x.shape[2:])}."
            )
        h = net.stem(x)
        skips = []
        for stage, down in zip(net.encoder, net.down):
            h = self._ckpt(stage, h)
            skips.append(h)
            h = down(h)
        h = self._ckpt(net.bottom, h)
        for stage, up, skip in zip(reversed(net.decoder), reversed(net.up), reversed(skips)):
            h = self._ckpt(functools.partial(_decode, stage, up), h, skip)
        return net.head(h)


class BlockCheckpoint(nn.Module):
    """Run ``blocks`` in turn, each under a (full or selective) non-reentrant checkpoint.

    Args:
        blocks: the modules, used as they are (not copied).
        policy: ``"full"`` or ``"selective"`` (save conv/matmul outputs, recompute the rest).

    Example:
        >>> chain = BlockCheckpoint([nn.Linear(3, 3), nn.Tanh()], policy="selective")
        >>> chain(torch.randn(2, 3)).shape
        torch.Size([2, 3])
    """

    def __init__(self, blocks: list[nn.Module], *, policy: str = "full") -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.policy = check_option("policy", policy, POLICIES)

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = _checkpointed(block, x, policy=self.policy)
        return x


class Checkpointed(nn.Module):
    """Run ``inner`` under a (full or selective) non-reentrant checkpoint while training.

    In eval mode, or with gradients off, ``inner`` runs as it is.

    Args:
        inner: the module, used as it is (not copied).
        policy: ``"full"`` or ``"selective"``.

    Example:
        >>> lin = nn.Linear(3, 3)
        >>> x = torch.randn(2, 3)
        >>> torch.equal(Checkpointed(lin)(x), lin(x))
        True
    """

    def __init__(self, inner: nn.Module, *, policy: str = "full") -> None:
        super().__init__()
        self.inner = inner
        self.policy = check_option("policy", policy, POLICIES)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return self.inner(x)
        return _checkpointed(self.inner, x, policy=self.policy)


def _checkpointed(fn: Callable[..., Tensor], *args: Tensor, policy: str) -> Tensor:
    if not torch.is_grad_enabled():
        return fn(*args)
    kw: dict[str, Any] = {"use_reentrant": False}
    if policy == "selective":
        kw["context_fn"] = sac_context
        if _HOOKS_KW:  # let saved-tensor hooks (the byte accounting) see what SAC keeps
            kw["respect_saved_tensors_hooks"] = True
    return checkpoint(fn, *args, **kw)


def _decode(stage: nn.Module, up: nn.Module, h: Tensor, skip: Tensor) -> Tensor:
    return stage(up(h) + skip)


class _CountingOffload(saved_tensors_hooks):
    """``save_on_cpu`` that also counts what stays on the compute device."""

    def __init__(self, pin_memory: bool, device_type: str) -> None:
        inner = save_on_cpu(pin_memory=pin_memory, device_type=device_type)
        self.kept: dict[int, int] = {}
        self.moved: dict[int, int] = {}

        def pack(t: Tensor):
            packed = inner.pack_hook(t)
            if not (isinstance(t, nn.Parameter) or (t.is_leaf and t.requires_grad)):
                same = packed[1].untyped_storage().data_ptr() == t.untyped_storage().data_ptr()
                storage = t.untyped_storage()
                (self.kept if same else self.moved)[storage.data_ptr()] = storage.nbytes()
            return packed

        super().__init__(pack, inner.unpack_hook)


class Offloaded(nn.Module):
    """Run ``module`` under ``torch.autograd.graph.save_on_cpu`` (offload to host memory).

    After each forward, :attr:`device_bytes` holds the saved-tensor bytes that stayed in the
    compute device's memory (all of them on a CPU, where ``tensor.cpu()`` is the tensor itself)
    and :attr:`host_bytes` those copied to host memory (on CUDA: all of them, pinned). The
    saved-tensor hooks of this wrapper hide the tensors from outer hooks such as
    :func:`invseg.engine.activation_bytes`, so benchmarks add :attr:`device_bytes`.

    Args:
        module: the model to run.

    Example:
        >>> m = Offloaded(nn.Tanh())
        >>> m(torch.randn(2, 4, requires_grad=True)).sum().backward()
        >>> m.device_bytes  # tanh saves its output; on a CPU it stays where it was
        32
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.device_bytes = 0
        self.host_bytes = 0

    def forward(self, *args: Any) -> Any:
        device = next((a.device for a in args if isinstance(a, Tensor)), torch.device("cpu"))
        kind = "cuda" if device.type == "cpu" else device.type  # the pinned-memory backend
        hooks = _CountingOffload(device.type == "cuda", kind)
        with hooks:
            out = self.module(*args)
        self.device_bytes = sum(hooks.kept.values())
        self.host_bytes = sum(hooks.moved.values())
        return out


def monai_unet(
    channels: tuple[int, ...], in_channels: int, out_channels: int, *, checkpointed: bool = False
) -> nn.Module:
    """MONAI's ``UNet`` (or ``CheckpointUNet``) with ``channels``, strides 2, 2 residual units.

    ``CheckpointUNet`` is defined in ``monai.networks.nets.unet`` but not exported; it wraps
    every sub-block in a non-reentrant ``torch.utils.checkpoint``.
    """
    from monai.networks.nets import unet

    cls = unet.CheckpointUNet if checkpointed else unet.UNet
    return cls(
        spatial_dims=3,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=channels,
        strides=(2,) * (len(channels) - 1),
        num_res_units=2,
    )


def unet_peers(
    twin: nn.Module, channels: tuple[int, ...], in_channels: int, out_channels: int
) -> list[tuple[str, str, nn.Module]]:
    """``(name, memory, model)`` rows of the peers of a UNet3D ``twin`` (weights shared)."""
    torch.manual_seed(0)
    return [
        ("UNet3D", "checkpoint per level (torch)", LevelCheckpoint(twin)),
        ("UNet3D", "selective checkpoint (torch)", LevelCheckpoint(twin, policy="selective")),
        ("UNet3D", "save_on_cpu (torch)", Offloaded(twin)),
        ("MONAI UNet", "store", monai_unet(channels, in_channels, out_channels)),
        (
            "MONAI UNet",
            "CheckpointUNet",
            monai_unet(channels, in_channels, out_channels, checkpointed=True),
        ),
    ]


def summary(rows: list, *, twin: tuple[str, str], ours: list[tuple[str, str]]) -> str:
    """A paragraph: each peer's activation share and step-time ratio against ``twin``.

    Args:
        rows: :class:`invseg.bench.harness.Row` s of one run.
        twin: ``(name, memory)`` of the reference row (the plain U-Net).
        ours: ``(name, memory)`` of the invertible rows to set beside the peers.
    """
    by = {(r.name, r.memory): r for r in rows}
    ref = by[twin]

    def share(r) -> str:
        return (
            f"{r.act_bytes / ref.act_bytes:.0%} of the activations at "
            f"{r.step_s / ref.step_s:.2f}x the step time"
        )

    parts = []
    for r in rows:
        if (r.name, r.memory) == twin or (r.name, r.memory) in ours:
            continue
        if r.name == twin[0] or r.name.startswith("MONAI"):
            text = f"{r.name} {r.memory}: {share(r)}"
            if r.host_bytes:
                text += f" (+{r.host_bytes / 2**20:.1f} MiB moved to host memory)"
            parts.append(text)
    mine = [f"{n} {m}: {share(by[(n, m)])}" for n, m in ours if (n, m) in by]
    return (
        f"Against the `{twin[0]}` twin ({twin[1]}) in the same run: "
        + "; ".join(parts)
        + ". Invertible nets: "
        + "; ".join(mine)
        + ". `save_on_cpu` keeps every saved tensor but in host memory: on a CPU nothing moves "
        "(its bytes are the twin's), on CUDA the device holds none of them and the step pays "
        "two PCIe copies of each; it trades host RAM and bandwidth, not compute. Checkpointing "
        "per level keeps only level inputs, but its backward rebuilds one whole level at a "
        "time, so its transient peak grows with blocks per level; selective checkpointing also "
        "keeps every conv output, which grows with depth like the twin. MONAI's nets "
        "down-sample at their first conv (no full-resolution blocks), hence their small "
        "absolute numbers. Invertibility wins where depth or resolution grows: its bytes are "
        "flat in blocks per level (table below) and its backward holds one block at a time; "
        "it does not win on step time against a net that is simply smaller."
    )
