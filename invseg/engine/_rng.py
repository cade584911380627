"""Recording and replaying RNG states so stochastic blocks rebuild exactly.

In ``memory="invert"`` mode a block with dropout must draw the same masks when it is
inverted and recomputed in backward as it drew in forward. Blocks call :func:`mark` right
before each stochastic sub-function; the engine keeps the states of one block on a stack and
the block pops them in reverse order while it runs backwards (last marked, first replayed).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.dropout import _DropoutNd


@dataclass(frozen=True)
class RNGState:
    """CPU state plus the state of one CUDA device (or ``None``)."""

    cpu: torch.Tensor
    device: torch.device
    cuda: torch.Tensor | None


_recorder: ContextVar[list[RNGState] | None] = ContextVar("invseg_rng_recorder", default=None)


def capture(device: torch.device) -> RNGState:
    """Capture the RNG state that a computation on ``device`` would draw from."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return RNGState(torch.get_rng_state(), device, cuda)


def mark(device: torch.device) -> None:
    """Record the current RNG state if a recorder is active (no-op otherwise)."""
    states = _recorder.get()
    if states is not None:
        states.append(capture(device))


@contextlib.contextmanager
def recording(states: list[RNGState] | None) -> Iterator[None]:
    """Activate ``states`` as the recorder for :func:`mark` calls (``None``: record nothing)."""
    token = _recorder.set(states)
    try:
        yield
    finally:
        _recorder.reset(token)


@contextlib.contextmanager
def replay(state: RNGState | None) -> Iterator[None]:
    """Run the body with ``state`` restored, leaving the global RNG untouched afterwards."""
    if state is None:
        yield
        return
    devices = [state.device] if state.cuda is not None else []
    with torch.random.fork_rng(devices=devices, device_type=state.device.type):
        torch.set_rng_state(state.cpu)
        if state.cuda is not None:
            torch.cuda.set_rng_state(state.cuda, state.device)
        yield


def is_stochastic(module: nn.Module) -> bool:
    """Whether ``module`` contains an active dropout layer (training mode, ``p > 0``)."""
    return any(isinstance(m, _DropoutNd) and m.training and m.p > 0 for m in module.modules())
