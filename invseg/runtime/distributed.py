"""torch.distributed helpers for ``torchrun`` launches (one process per device).

``torchrun --nproc_per_node N -m invseg train CONFIG`` sets ``WORLD_SIZE``, ``RANK``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init_from_env` reads them and joins
the process group (``nccl`` on CUDA, ``gloo`` on CPU). A plain ``python`` launch is a world of one
and never touches :mod:`torch.distributed`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from invseg.runtime.device import resolve_device

__all__ = [
    "DistInfo",
    "all_reduce_mean",
    "barrier",
    "cleanup",
    "init_from_env",
    "is_main_process",
    "resolve_device",
]


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job.

    Attributes:
        rank: global rank (0 writes files and prints).
        local_rank: rank on this node (selects the CUDA device).
        world_size: number of processes.
        device: the device this process trains on.
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        """True on rank 0."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when more than one process takes part."""
        return self.world_size > 1


def init_from_env(device: str = "auto") -> DistInfo:
    """Join the process group described by torchrun's environment variables.

    With ``WORLD_SIZE`` unset or 1 this only resolves the device.

    Args:
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``; under torchrun with CUDA each process
            takes ``cuda:LOCAL_RANK``.

    Raises:
        ValueError: bad device name or inconsistent environment.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    dev = resolve_device(device)
    if world_size <= 1:
        return DistInfo(device=dev)
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, world_size=world_size, rank=rank)
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size, device=dev)


def barrier(info: DistInfo) -> None:
    """Wait for every process (no-op for a world of one)."""
    if info.distributed and dist.is_initialized():
        dist.barrier()


def all_reduce_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean of ``value`` over all processes (returned unchanged for a world of one)."""
    if not (info.distributed and dist.is_initialized()):
        return value
    out = value.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / info.world_size


def cleanup(info: DistInfo) -> None:
    """Leave the process group if this module joined one."""
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()


def is_main_process() -> bool:
    """True unless torchrun says this process is not rank 0 (``RANK`` environment variable)."""
    return os.environ.get("RANK", "0") == "0"
