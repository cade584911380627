r"""Batched conjugate gradient for Hermitian positive-definite systems.

Solves :math:`(A^H A + \mu I)\,x = b` independently for every batch element, the inner
solve of MoDL's data-consistency layer and of CG-SENSE.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["CGInfo", "conjugate_gradient"]


class CGInfo(NamedTuple):
    """Convergence report of :func:`conjugate_gradient`.

    Attributes:
        iterations: CG iterations run.
        residual: largest relative residual :math:`\\|b - Hx\\| / \\|b\\|` over the batch.
    """

    iterations: int
    residual: float


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """Batched inner product <a, b> = sum conj(a) b over all but the first dim, shape (B,)."""
    return (a.conj() * b).flatten(1).sum(1)


def conjugate_gradient(
    normal: Callable[[Tensor], Tensor],
    b: Tensor,
    *,
    mu: float | Tensor = 0.0,
    x0: Tensor | None = None,
    max_iter: int = 10,
    tol: float = 1e-6,
    return_info: bool = False,
) -> Tensor | tuple[Tensor, CGInfo]:
    r"""Solve :math:`(N + \mu I)x = b` by conjugate gradient, batched over the first dim.

    :math:`N` must be Hermitian positive semi-definite (e.g. :meth:`SenseOperator.normal`) and
    :math:`\mu \ge 0` (strictly positive unless :math:`N` is definite). The iteration stops after
    ``max_iter`` steps or when every batch element reaches
    :math:`\|b - (N+\mu I)x\| \le \mathrm{tol}\,\|b\|`. It is differentiable (autograd runs
    through the iterations), so ``mu`` may be a learnable tensor.

    Args:
        normal: callable applying :math:`N`.
        b: right-hand side, ``(B, ...)``, real or complex.
        mu: scalar (or tensor broadcastable to ``b``) Tikhonov weight.
        x0: initial guess (zeros by default).
        max_iter: maximum iterations (``>= 0``).
        tol: relative residual tolerance.
        return_info: also return a :class:`CGInfo`.

    Returns:
        ``x`` (and a :class:`CGInfo` if ``return_info``).

    Raises:
        ValueError: for ``max_iter < 0`` or ``tol < 0``.

    Example:
        >>> d = torch.tensor([[1.0, 2.0, 4.0]])
        >>> x = conjugate_gradient(lambda v: d * v, torch.ones(1, 3), mu=1.0, max_iter=5)
        >>> torch.allclose(x, 1 / (d + 1))
        True
    """
    if max_iter < 0:
        raise ValueError(f"max_iter must be >= 0, got {max_iter}")
    if tol < 0:
        raise ValueError(f"tol must be >= 0, got {tol}")

    def H(v: Tensor) -> Tensor:
        return normal(v) + mu * v

    shape = (-1,) + (1,) * (b.dim() - 1)
    x = torch.zeros_like(b) if x0 is None else x0
    r = b - H(x) if x0 is not None else b.clone()
    p = r
    rr = _dot(r, r).real  # (B,)
    bb = _dot(b, b).real.clamp_min(torch.finfo(rr.dtype).tiny)
    it = 0
    for it in range(1, max_iter + 1):
        if bool((rr <= (tol**2) * bb).all()):
            it -= 1
            break
        Hp = H(p)
        pHp = _dot(p, Hp).real
        alpha = rr / pHp.clamp_min(torch.finfo(rr.dtype).tiny)
        x = x + alpha.view(shape) * p
        r = r - alpha.view(shape) * Hp
        rr_new = _dot(r, r).real
        beta = rr_new / rr.clamp_min(torch.finfo(rr.dtype).tiny)
        p = r + beta.view(shape) * p
        rr = rr_new
    if return_info:
        res = float((rr / bb).sqrt().max()) if rr.numel() else 0.0
        return x, CGInfo(iterations=it, residual=res)
    return x
