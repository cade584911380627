"""Helpers to check invertible blocks: round trips and gradient parity between memory modes."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from invseg.engine.sequential import set_memory


def assert_round_trip(
    block: nn.Module, x: Tensor, *context: object, rtol: float = 1e-10, atol: float = 1e-10
) -> None:
    """Assert ``block.inverse(block(x)) == x`` (run it in float64 for tight tolerances).

    Example:
        >>> from invseg.engine import AdditiveCoupling
        >>> block = AdditiveCoupling(torch.nn.Conv3d(2, 2, 3, padding=1)).double()
        >>> assert_round_trip(block, torch.randn(1, 4, 8, 8, 8, dtype=torch.float64))
    """
    with torch.no_grad():
        rebuilt = block.inverse(block(x, *context), *context)
    torch.testing.assert_close(rebuilt, x, rtol=rtol, atol=atol)


def relative_error(a: Tensor, b: Tensor) -> float:
    """``||a - b|| / ||b||`` (0 when both are zero)."""
    denom = torch.linalg.vector_norm(b)
    diff = torch.linalg.vector_norm(a - b)
    return 0.0 if float(denom) == 0.0 and float(diff) == 0.0 else float(diff / denom)


def gradients(
    module: nn.Module,
    inputs: Sequence[Tensor],
    loss: Callable[[Tensor], Tensor] = lambda y: (y * y).sum(),
    *,
    forward: Callable[..., Tensor] | None = None,
) -> dict[str, Tensor]:
    """Gradients of ``loss(module(*inputs))`` for every parameter and grad-requiring input.

    Keys are parameter names and ``"input{i}"`` for inputs.
    """
    module.zero_grad(set_to_none=True)
    leaves = [t.detach().clone().requires_grad_(t.requires_grad) for t in inputs]
    out = (forward or module)(*leaves)
    loss(out).backward()
    grads = {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}
    grads.update({f"input{i}": t.grad.clone() for i, t in enumerate(leaves) if t.grad is not None})
    return grads


def gradient_parity(
    module: nn.Module,
    *inputs: Tensor,
    modes: Sequence[str] = ("invert", "store"),
    loss: Callable[[Tensor], Tensor] = lambda y: (y * y).sum(),
    seed: int = 0,
) -> dict[str, float]:
    """Relative gradient error of each name between ``modes[0]`` and ``modes[1]``.

    Runs ``module`` on identical copies of its weights in both memory modes (RNG reseeded, so
    dropout draws the same masks) and returns ``{name: ||g_a - g_b|| / ||g_b||}`` for every
    parameter and for each grad-requiring input.

    Raises:
        AssertionError: if a gradient exists in one mode but not the other.

    Example:
        >>> from invseg.engine import AdditiveCoupling, InvertibleSequential
        >>> chain = InvertibleSequential(AdditiveCoupling(torch.nn.Conv3d(2, 2, 3, padding=1)))
        >>> x = torch.randn(1, 4, 6, 6, 6, dtype=torch.float64, requires_grad=True)
        >>> max(gradient_parity(chain.double(), x).values()) < 1e-10
        True
    """
    results = []
    for mode in modes:
        twin = set_memory(copy.deepcopy(module), mode)
        torch.manual_seed(seed)
        results.append(gradients(twin, inputs, loss))
    first, ref = results
    if first.keys() != ref.keys():
        raise AssertionError(
            f"gradients differ in which tensors get them: {first.keys() ^ ref.keys()}"
        )
    return {k: relative_error(first[k], ref[k]) for k in ref}
