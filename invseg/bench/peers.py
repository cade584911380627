"""What a user would pick instead of invertibility: the memory-for-compute peers.

Each peer keeps the weights of the model it is set beside, so a row of a benchmark table differs
from its twin only in how the activations are kept:

* ``UNet3D(memory="checkpoint")`` (the net itself, no wrapper): ``torch.utils.checkpoint``
  (non-reentrant) around every level; only level inputs are kept;
* :class:`SelectiveCheckpoint`: selective activation checkpointing
  (``create_selective_checkpoint_contexts``) around the same levels of a
  :class:`~invseg.nets.UNet3D`: inside each level the outputs of convolutions and matrix
  products are saved, the rest (norms, activations, additions) is recomputed;
* :class:`BlockCheckpoint`: full or selective checkpointing around each block of a chain;
* :class:`Offloaded`: ``torch.autograd.graph.save_on_cpu`` (pinned host memory on CUDA): all
  saved tensors move to host memory and come back in backward. On a CPU nothing moves, so the
  bytes held are the twin's (:attr:`Offloaded.device_bytes`);
* :func:`monai_unet`: MONAI's ``UNet`` and its ``CheckpointUNet`` (torch checkpoints nested
  per sub-block) with the twin's channels.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.graph import save_on_cpu, saved_tensors_hooks
from torch.utils.checkpoint import checkpoint

from invseg._choices import check_option
from invseg.engine.memory import is_activation

__all__ = [
    "POLICIES",
    "SAVED_OPS",
    "BlockCheckpoint",
    "Offloaded",
    "SelectiveCheckpoint",
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


class SelectiveCheckpoint(nn.Module):
    """Selective activation checkpointing around each level of a :class:`~invseg.nets.UNet3D`.

    The levels are those of ``UNet3D(memory="checkpoint")`` (see
    :meth:`~invseg.nets.UNet3D.forward_levels`); each runs under a non-reentrant
    ``torch.utils.checkpoint`` whose ``context_fn`` is :func:`sac_context`, while training with
    grad enabled. In eval mode or without grad the net runs as it is.

    Args:
        net: the U-Net; its modules and weights are used as they are (not copied).

    Shape:
        that of ``net``.

    Example:
        >>> from invseg.nets import UNet3D
        >>> net = UNet3D(3, 1, 2, channels=(4, 8))
        >>> x = torch.randn(1, 1, 8, 8, 8)
        >>> torch.allclose(SelectiveCheckpoint(net)(x), net(x), atol=1e-6)
        True
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net.forward_levels(x, self._level)

    def _level(self, fn: Callable[..., Tensor], *args: Tensor) -> Tensor:
        if not self.net.training:
            return fn(*args)
        return _checkpointed(fn, *args, policy="selective")


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


def _checkpointed(fn: Callable[..., Tensor], *args: Tensor, policy: str) -> Tensor:
    if not torch.is_grad_enabled():
        return fn(*args)
    kw: dict[str, Any] = {"use_reentrant": False}
    if policy == "selective":
        kw["context_fn"] = sac_context
        if _HOOKS_KW:  # let saved-tensor hooks (the byte accounting) see what SAC keeps
            kw["respect_saved_tensors_hooks"] = True
    return checkpoint(fn, *args, **kw)


class _CountingOffload(saved_tensors_hooks):
    """``save_on_cpu`` that also counts what stays on the compute device."""

    def __init__(self, pin_memory: bool, device_type: str) -> None:
        inner = save_on_cpu(pin_memory=pin_memory, device_type=device_type)
        self.kept: dict[int, int] = {}
        self.moved: dict[int, int] = {}

        def pack(t: Tensor):
            packed = inner.pack_hook(t)
            if is_activation(t):  # what activation_bytes counts, split by where it stays
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
    """``(name, memory, model)`` rows of the peers of a UNet3D ``twin`` (the twin's weights).

    The per-level checkpoint row is a copy of the twin with ``memory="checkpoint"``; the others
    wrap the twin itself, except MONAI's nets (seeded, with the twin's channels).
    """
    checkpointed = copy.deepcopy(twin)
    checkpointed.memory = "checkpoint"
    torch.manual_seed(0)
    return [
        ("UNet3D", "checkpoint per level (torch)", checkpointed),
        ("UNet3D", "selective checkpoint (torch)", SelectiveCheckpoint(twin)),
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
