"""Shared helpers of the CUDA tests: skip without a GPU, peak memory, gradient comparison.

Every module here sets ``pytestmark = GPU`` so ``pytest -m gpu`` selects the tests and a
machine without CUDA skips them cleanly (they are collected, never run).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch
from torch import nn

GPU = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


@pytest.fixture
def cuda() -> Iterator[torch.device]:
    """``cuda:0`` with TF32 off (float32 means float32 in the parity tests), restored after."""
    dev = torch.device("cuda", 0)
    old = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    try:
        yield dev
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old
        torch.cuda.empty_cache()


def peak_step_bytes(step: Callable[[], None], model: nn.Module, device: torch.device) -> int:
    """Peak CUDA bytes a training step adds on top of what is allocated before it.

    Parameters and the input are allocated before the step; the gradients it creates (one
    per parameter, ``set_to_none`` beforehand) are subtracted, so the number is activations,
    temporaries and workspace only.
    """
    model.zero_grad(set_to_none=True)
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    grads = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    peak = torch.cuda.max_memory_allocated(device) - base - grads
    model.zero_grad(set_to_none=True)
    return peak


def grads_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """A float32 copy of every parameter's gradient, by name."""
    return {n: p.grad.detach().float().clone() for n, p in model.named_parameters()}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b|| / ||b||`` (0 when both are zero)."""
    den = torch.linalg.vector_norm(b.float())
    num = torch.linalg.vector_norm(a.float() - b.float())
    return 0.0 if float(den) == 0 and float(num) == 0 else float(num / den.clamp_min(1e-30))


def worst_rel_err(got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> float:
    """The largest per-parameter relative error of ``got`` against ``ref``."""
    assert set(got) == set(ref)
    return max(rel_err(got[n], ref[n]) for n in ref)
