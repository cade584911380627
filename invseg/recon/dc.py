r"""MoDL's data-consistency layer with a learnable, floored :math:`\mu` and an implicit backward.

.. math::

    x = \mathrm{DC}(z) = (A^H A + \mu I)^{-1}(A^H y + \mu z).

The solve is a conjugate gradient that stops on a relative residual (with a cap), warm-started
at :math:`z`. Its backward is implicit differentiation, one CG solve with the same operator:

.. math::

    g = (A^H A + \mu I)^{-1}\,\bar x, \qquad \bar z = \mu g, \qquad
    \overline{A^H y} = g, \qquad \bar\mu = \mathrm{Re}\,\langle g, z - x\rangle,

never back-propagation through the CG iterations, so every memory mode (``store``,
``checkpoint``, ``invert``) computes the same gradient, and a backward that already knows the
output (the engine's ``invert`` mode) skips the forward solve altogether.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from invseg.recon.cg import conjugate_gradient
from invseg.recon.operators import LinearOperator

__all__ = ["DataConsistency", "check_mu", "dc_solve"]


def check_mu(mu: float, name: str = "mu") -> float:
    """``mu`` as a float, or a ``TypeError``/``ValueError`` naming it."""
    if isinstance(mu, bool) or not isinstance(mu, (int, float)) or not math.isfinite(mu):
        raise TypeError(f"{name} must be a finite float, got {mu!r}")
    if mu <= 0:
        raise ValueError(f"{name} must be > 0 (mu weights ||x - z||^2), got {mu}; MoDL uses 0.05")
    return float(mu)


def _dot_re(a: Tensor, b: Tensor) -> Tensor:
    """:math:`\\mathrm{Re}\\sum \\bar a b` over everything (a real scalar)."""
    return (a.conj() * b).real.sum()


class _DCSolve(torch.autograd.Function):
    """``x = (N + mu I)^{-1}(AHy + mu z)``; backward by one CG solve (implicit function theorem)."""

    @staticmethod
    def forward(ctx, z, AHy, mu, operator, iters, tol, x_known):
        if x_known is None:
            x = conjugate_gradient(
                operator.normal, AHy + mu * z, mu=mu, x0=z, max_iter=iters, tol=tol
            )
        else:
            x = x_known.detach().clone()
        ctx.operator, ctx.iters, ctx.tol = operator, iters, tol
        ctx.save_for_backward(z, x, mu)
        return x

    @staticmethod
    def backward(ctx, grad_x):
        z, x, mu = ctx.saved_tensors
        g = conjugate_gradient(ctx.operator.normal, grad_x, mu=mu, max_iter=ctx.iters, tol=ctx.tol)
        grad_z = mu * g if ctx.needs_input_grad[0] else None
        grad_ahy = g if ctx.needs_input_grad[1] else None
        grad_mu = None
        if ctx.needs_input_grad[2]:
            grad_mu = _dot_re(g, z - x).to(mu.dtype).expand_as(mu).clone()
        return grad_z, grad_ahy, grad_mu, None, None, None, None


def dc_solve(
    z: Tensor,
    AHy: Tensor,
    mu: Tensor,
    operator: LinearOperator,
    *,
    max_iter: int = 30,
    tol: float = 1e-5,
    output: Tensor | None = None,
) -> Tensor:
    r"""Differentiable :math:`(A^H A + \mu I)^{-1}(A^H y + \mu z)` with the implicit backward.

    Args:
        z: image ``(B, 1, *spatial)`` complex.
        AHy: :math:`A^H y`, same shape.
        mu: scalar tensor :math:`\mu > 0`.
        operator: a :class:`~invseg.recon.operators.LinearOperator`.
        max_iter: CG cap (forward and backward).
        tol: CG relative residual tolerance.
        output: the known solution; when given, no forward solve runs and only the backward
            is built (the engine's backward knows each unroll's output).

    Example:
        >>> from invseg.recon.operators import SenseOperator
        >>> op = SenseOperator(torch.ones(1, 1, 4, 4, dtype=torch.complex128), torch.ones(1, 4))
        >>> z = torch.randn(1, 1, 4, 4, dtype=torch.complex128, requires_grad=True)
        >>> x = dc_solve(z, torch.zeros_like(z), torch.tensor(1.0, dtype=torch.float64), op)
        >>> torch.allclose(x, z / 2)  # A^H A = I: x = z / (1 + mu)
        True
    """
    return _DCSolve.apply(z, AHy, mu, operator, max_iter, tol, output)


class DataConsistency(nn.Module):
    r"""MoDL data consistency :math:`x = (A^H A + \mu I)^{-1}(A^H y + \mu z)` with a floored,
    learnable :math:`\mu = \mu_{\min} + \mathrm{softplus}(\rho)`.

    The floor bounds the layer's condition number :math:`(1 + \mu)/\mu \le (1 + \mu_{\min}) /
    \mu_{\min}` (21 for the default 0.05) whatever the optimiser does, which bounds how much
    the inverse amplifies errors.

    Args:
        mu_init: initial :math:`\mu` (``>= mu_min``; at the floor it starts 1% above it).
        cg_iters: CG cap (forward, backward and the inverse's refinement).
        cg_tol: CG relative residual tolerance.
        learn_mu: make :math:`\mu` a trainable parameter.
        refine_steps: Newton corrections of the closed-form inverse (see :meth:`inverse`).
        mu_min: the floor :math:`\mu_{\min} > 0`.

    Raises:
        ValueError: ``mu_init < mu_min``, ``mu_min <= 0``, ``cg_iters < 1``, ``cg_tol < 0`` or a
            bad ``refine_steps``.

    Example:
        >>> from invseg.recon.operators import SenseOperator
        >>> S = torch.ones(1, 1, 8, 8, dtype=torch.complex128)
        >>> op = SenseOperator(S, torch.ones(1, 1, 1, 8))
        >>> dc = DataConsistency(0.05, cg_iters=20).double()
        >>> z = torch.randn(1, 1, 8, 8, dtype=torch.complex128)
        >>> AHy = op.A_adjoint(op.A(torch.randn(1, 1, 8, 8, dtype=torch.complex128)))
        >>> torch.allclose(dc.inverse(dc(z, AHy, op), AHy, op), z)
        True
    """

    def __init__(
        self,
        mu_init: float = 0.05,
        *,
        cg_iters: int = 30,
        cg_tol: float = 1e-5,
        learn_mu: bool = True,
        refine_steps: int = 1,
        mu_min: float = 0.05,
    ) -> None:
        super().__init__()
        mu_init, mu_min = check_mu(mu_init, "mu_init"), check_mu(mu_min, "mu_min")
        if mu_init < mu_min:
            raise ValueError(f"mu_init={mu_init} is below the floor mu_min={mu_min}")
        if isinstance(cg_iters, bool) or not isinstance(cg_iters, int) or cg_iters < 1:
            raise ValueError(f"cg_iters must be an int >= 1, got {cg_iters!r}")
        if not cg_tol >= 0:
            raise ValueError(f"cg_tol must be >= 0, got {cg_tol!r}")
        if isinstance(refine_steps, bool) or not isinstance(refine_steps, int) or refine_steps < 0:
            raise ValueError(f"refine_steps must be an int >= 0, got {refine_steps!r}")
        self.refine_steps, self.mu_min = refine_steps, mu_min
        excess = max(mu_init - mu_min, 1e-2 * mu_min)
        raw = torch.tensor(excess + math.log(-math.expm1(-excess)))  # softplus^{-1}
        self.raw_mu = nn.Parameter(raw, requires_grad=learn_mu)
        self.cg_iters, self.cg_tol = cg_iters, float(cg_tol)

    @property
    def mu(self) -> Tensor:
        """:math:`\\mu = \\mu_{\\min} + \\mathrm{softplus}(\\rho) > \\mu_{\\min}`."""
        return self.mu_min + F.softplus(self.raw_mu)

    def forward(
        self,
        z: Tensor,
        AHy: Tensor,
        operator: LinearOperator,
        *,
        output: Tensor | None = None,
    ) -> Tensor:
        """Solve :math:`(A^H A + \\mu I)x = A^H y + \\mu z` (see :func:`dc_solve`)."""
        return dc_solve(
            z, AHy, self.mu, operator, max_iter=self.cg_iters, tol=self.cg_tol, output=output
        )

    @torch.no_grad()
    def inverse(self, x: Tensor, AHy: Tensor, operator: LinearOperator) -> Tensor:
        r"""Invert the layer: closed form, then Newton corrections against the inexact CG.

        The closed form :math:`z_0 = ((A^H A + \mu I)x - A^H y)/\mu` inverts the exact solve;
        the forward CG stops at a relative residual ``cg_tol``, and that residual comes back
        divided by :math:`\mu` in :math:`z`. Each of the ``refine_steps`` corrections

        .. math::

            z_{k+1} = z_k + \tfrac{1}{\mu}(A^H A + \mu I)\big(x - \mathrm{DC}(z_k)\big)

        (Newton with the exact solve's Jacobian) repeats the forward's CG (same warm start
        :math:`z_k`, same stopping rule), so that its residual is inverted too. Rounding in ``x``
        is still amplified by up to :math:`(1 + \mu)/\mu`.
        """
        mu = self.mu
        z = (operator.normal(x) + mu * x - AHy) / mu
        for _ in range(self.refine_steps):
            solved = conjugate_gradient(
                operator.normal, AHy + mu * z, mu=mu, x0=z, max_iter=self.cg_iters, tol=self.cg_tol
            )
            e = x - solved  # (B, 1, *spatial)
            z = z + (operator.normal(e) + mu * e) / mu
        return z

    def extra_repr(self) -> str:
        return (
            f"mu={self.mu.item():.4g}, mu_min={self.mu_min:g}, cg_iters={self.cg_iters}, "
            f"cg_tol={self.cg_tol:g}, refine_steps={self.refine_steps}"
        )
