r"""Non-learned baselines: zero-filled :math:`A^H y` and CG-SENSE."""

from __future__ import annotations

from torch import Tensor

from invseg.recon.cg import conjugate_gradient
from invseg.recon.operators import SenseOperator

__all__ = ["cg_sense", "zero_filled"]


def zero_filled(y: Tensor, operator: SenseOperator) -> Tensor:
    r"""Zero-filled coil-combined reconstruction :math:`x = A^H y`.

    Example:
        >>> import torch
        >>> op = SenseOperator(torch.ones(1, 1, 4, 4, dtype=torch.complex64), torch.ones(1, 4))
        >>> x = torch.randn(1, 1, 4, 4, dtype=torch.complex64)
        >>> torch.allclose(zero_filled(op.A(x), op), x, atol=1e-6)
        True
    """
    return operator.A_adjoint(y)


def cg_sense(
    y: Tensor,
    operator: SenseOperator,
    *,
    mu: float = 1e-3,
    max_iter: int = 30,
    tol: float = 1e-6,
) -> Tensor:
    r"""CG-SENSE: :math:`x = (A^H A + \mu I)^{-1} A^H y` by conjugate gradient.

    Args:
        y: k-space ``(B, coils, *spatial)``.
        operator: the :class:`SenseOperator`.
        mu: small Tikhonov weight (``>= 0``).
        max_iter: CG iterations.
        tol: CG tolerance.

    Example:
        >>> import torch
        >>> op = SenseOperator(torch.ones(1, 1, 4, 4, dtype=torch.complex64), torch.ones(1, 4))
        >>> x = torch.randn(1, 1, 4, 4, dtype=torch.complex64)
        >>> torch.allclose(cg_sense(op.A(x), op, mu=0.0), x, atol=1e-5)
        True
    """
    if mu < 0:
        raise ValueError(f"mu must be >= 0, got {mu}")
    return conjugate_gradient(
        operator.normal, operator.A_adjoint(y), mu=mu, max_iter=max_iter, tol=tol
    )
