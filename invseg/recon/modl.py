r"""MoDL (Aggarwal et al. 2018) trained with memory-efficient learning on the invertible engine.

One unroll maps :math:`x_n \mapsto x_{n+1}`:

.. math::

    z_n = R_w(x_n) = x_n + f_w(x_n), \qquad
    x_{n+1} = (A^H A + \mu I)^{-1}(A^H y + \mu z_n),

and is inverted as in MEL (Kellman et al. 2020; Wang et al. ISMRM 2021):

.. math::

    z_n = \tfrac{1}{\mu}\big((A^H A + \mu I)x_{n+1} - A^H y\big), \qquad
    x_n = R_w^{-1}(z_n) \ \text{by the fixed point}\ x = z_n - f_w(x).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from invseg._choices import closest
from invseg.engine import InvertibleSequential
from invseg.recon.cg import conjugate_gradient
from invseg.recon.denoiser import ResidualDenoiser
from invseg.recon.operators import SenseOperator

__all__ = ["DataConsistency", "MoDL", "MoDLUnroll"]

_INITS = ("adjoint", "sense")


def _check_mu(mu: float) -> float:
    if isinstance(mu, bool) or not isinstance(mu, (int, float)) or not math.isfinite(mu):
        raise TypeError(f"mu must be a finite float, got {mu!r}")
    if mu <= 0:
        raise ValueError(f"mu must be > 0 (it weights ||x - z||^2), got {mu}; MoDL uses 0.05")
    return float(mu)


class DataConsistency(nn.Module):
    r"""MoDL data-consistency layer :math:`x = (A^H A + \mu I)^{-1}(A^H y + \mu z)` with learnable
    :math:`\mu = \mathrm{softplus}(\rho) > 0`.

    Args:
        mu_init: initial :math:`\mu > 0`.
        cg_iters: conjugate-gradient iterations.
        cg_tol: relative residual tolerance of CG.
        learn_mu: make :math:`\mu` a trainable parameter.
        refine_steps: Newton corrections of the closed-form inverse (see :meth:`inverse`).

    Raises:
        ValueError: ``mu_init <= 0``.

    Example:
        >>> S = torch.ones(1, 1, 8, 8, dtype=torch.complex128)
        >>> op = SenseOperator(S, torch.ones(1, 1, 1, 8))
        >>> dc = DataConsistency(0.05, cg_iters=20).double()
        >>> z = torch.randn(1, 1, 8, 8, dtype=torch.complex128)
        >>> y = op.A(torch.randn(1, 1, 8, 8, dtype=torch.complex128))
        >>> torch.allclose(dc.inverse(dc(z, y, op), y, op), z)
        True
    """

    def __init__(
        self,
        mu_init: float = 0.05,
        *,
        cg_iters: int = 10,
        cg_tol: float = 1e-6,
        learn_mu: bool = True,
        refine_steps: int = 1,
    ) -> None:
        super().__init__()
        mu_init = _check_mu(mu_init)
        if cg_iters < 1:
            raise ValueError(f"cg_iters must be >= 1, got {cg_iters}")
        if isinstance(refine_steps, bool) or not isinstance(refine_steps, int) or refine_steps < 0:
            raise ValueError(f"refine_steps must be an int >= 0, got {refine_steps!r}")
        self.refine_steps = refine_steps
        raw = torch.tensor(mu_init + math.log(-math.expm1(-mu_init)))  # softplus^{-1}
        self.raw_mu = nn.Parameter(raw, requires_grad=learn_mu)
        self.cg_iters, self.cg_tol = cg_iters, cg_tol

    @property
    def mu(self) -> Tensor:
        """:math:`\\mu = \\mathrm{softplus}(\\rho)`."""
        return F.softplus(self.raw_mu)

    def forward(self, z: Tensor, y: Tensor, operator: SenseOperator) -> Tensor:
        """CG solve of :math:`(A^H A + \\mu I)x = A^H y + \\mu z`, warm-started at ``z``."""
        mu = self.mu
        AHy = operator.A_adjoint(y)  # (B, 1, *spatial)
        return conjugate_gradient(
            operator.normal, AHy + mu * z, mu=mu, x0=z, max_iter=self.cg_iters, tol=self.cg_tol
        )

    def inverse(self, x: Tensor, y: Tensor, operator: SenseOperator) -> Tensor:
        r"""Invert the layer: closed form, then Newton corrections against the truncated CG.

        The closed form :math:`z_0 = ((A^H A + \mu I)x - A^H y)/\mu` inverts the exact solve,
        but the forward runs only ``cg_iters`` CG steps, whose residual :math:`r` comes back as
        an error :math:`r/\mu` in :math:`z` (about 1e-2 relative after 10 CG steps at
        :math:`\mu = 0.05`). Each of the ``refine_steps`` corrections

        .. math::

            z_{k+1} = z_k + \tfrac{1}{\mu}(A^H A + \mu I)\big(x - \mathrm{DC}(z_k)\big)

        (Newton's method with the exact solve's Jacobian :math:`\mu (A^H A + \mu I)^{-1}`)
        costs one forward CG and divides that error by about 10. Rounding in ``x`` is still
        amplified by up to :math:`(1 + \mu)/\mu`, the condition number of the layer.
        """
        mu = self.mu
        AHy = operator.A_adjoint(y)  # (B, 1, *spatial)
        z = (operator.normal(x) + mu * x - AHy) / mu
        for _ in range(self.refine_steps):
            e = x - self(z, y, operator)  # (B, 1, *spatial)
            z = z + (operator.normal(e) + mu * e) / mu
        return z

    def extra_repr(self) -> str:
        return (
            f"mu={self.mu.item():.4g}, cg_iters={self.cg_iters}, cg_tol={self.cg_tol:g}, "
            f"refine_steps={self.refine_steps}"
        )


class MoDLUnroll(nn.Module):
    r"""One invertible MoDL unroll: denoiser :math:`R` then data consistency.

    Args:
        denoiser: a :class:`ResidualDenoiser` (anything with ``forward`` and
            ``inverse(z, max_iter, tol)``).
        dc: a :class:`DataConsistency`.
        fixed_point_iters: iterations of the denoiser inverse.
        fixed_point_tol: tolerance of the denoiser inverse.

    Shape:
        ``x``: ``(B, 1, *spatial)`` complex; context ``y``: ``(B, coils, *spatial)`` and the
        :class:`SenseOperator`.

    Example:
        >>> S = torch.ones(1, 1, 8, 8, dtype=torch.complex128)
        >>> op = SenseOperator(S, torch.ones(1, 1, 1, 8))
        >>> u = MoDLUnroll(ResidualDenoiser(channels=4, layers=2), DataConsistency(0.5)).double()
        >>> x = torch.randn(1, 1, 8, 8, dtype=torch.complex128)
        >>> y = op.A(x)
        >>> torch.allclose(u.inverse(u(x, y, op), y, op), x, atol=1e-5)
        True
    """

    def __init__(
        self,
        denoiser: nn.Module,
        dc: DataConsistency,
        *,
        fixed_point_iters: int = 50,
        fixed_point_tol: float = 1e-6,
    ) -> None:
        super().__init__()
        self.denoiser, self.dc = denoiser, dc
        self.fixed_point_iters, self.fixed_point_tol = fixed_point_iters, fixed_point_tol

    def forward(self, x: Tensor, y: Tensor, operator: SenseOperator) -> Tensor:
        z = self.denoiser(x)  # (B, 1, *spatial)
        return self.dc(z, y, operator)

    def inverse(self, x_next: Tensor, y: Tensor, operator: SenseOperator) -> Tensor:
        z = self.dc.inverse(x_next, y, operator)  # (B, 1, *spatial)
        return self.denoiser.inverse(z, max_iter=self.fixed_point_iters, tol=self.fixed_point_tol)


class MoDL(nn.Module):
    r"""MoDL unrolled reconstruction trained with memory-efficient learning (MEL).

    ``model(y, operator)`` (deepinv's ``model(y, physics)``) computes :math:`x_0 = A^H y` (or a
    CG-SENSE solve with :math:`\mu`) and runs ``num_unrolls`` :class:`MoDLUnroll` blocks through
    :class:`invseg.engine.InvertibleSequential` with ``(y, operator)`` as context. With
    ``memory="invert"`` only the output is kept; backward rebuilds each unroll's input (closed-form
    DC inverse, fixed-point denoiser inverse), so activation memory does not grow with
    ``num_unrolls``. ``anchor_every=k`` keeps every k-th unroll's input to bound drift (MEL's
    sparse checkpoints); after backward, :attr:`inverse_errors` holds the relative error of
    each rebuilt input measured at the anchors.

    Numerical stability: the DC layer has condition number :math:`(1 + \mu)/\mu` (21 for mu =
    0.05), so its inverse multiplies errors in the sampled k-space components by up to 21 per
    unroll, and the closed form does not invert a truncated CG exactly (the CG residual comes back
    divided by :math:`\mu`: 1e-2 relative after 10 CG steps). This is MoDL's maths, not rounding:
    pure inversion (``anchor_every=None``) drifts as about :math:`21^n` and its gradients are
    useless past ~5 unrolls even in float64 (measured relative gradient error vs ``"store"``, 2D
    32x32: 4e3 at 10 unrolls, 1e29 at 30 in float64). The defaults therefore keep every 2nd unroll
    input (``anchor_every=2``: one complex image per two unrolls, still ~100x below ``"store"``) so
    at most one unroll is ever inverted, and refine the closed-form DC inverse by one Newton step
    (``dc_refine_steps=1``); measured gradient error vs ``"store"`` in float32 at 10-30 unrolls: <=
    4e-4. ``drift_tol`` (5e-2 by default) raises an :class:`~invseg.engine.InverseDriftWarning` when
    a rebuilt input at an anchor is off by more than that (about where gradient errors reach 1e-3).
    ``memory="checkpoint"`` (or ``anchor_every=1``) gives exact gradients.

    Args:
        num_unrolls: number of unrolls :math:`N`.
        spatial_dims: 2 for 2D; 3 for 3D slabs and 2D+time.
        channels: hidden channels of the denoiser.
        layers: convolutions of the denoiser.
        shared_weights: one denoiser and one :math:`\mu` for all unrolls (MoDL) or one per unroll.
        memory: ``"invert"``, ``"checkpoint"`` or ``"store"`` (plain autograd).
        cg_iters: CG iterations per DC layer.
        cg_tol: CG tolerance.
        mu_init: initial :math:`\mu > 0`.
        anchor_every: keep every k-th unroll input; ``None`` for pure inversion (flat memory,
            unusable gradients past a few unrolls, see above).
        lipschitz: bound on the denoiser residual's Lipschitz constant.
        init: ``"adjoint"`` (:math:`A^H y`) or ``"sense"`` (CG-SENSE with :math:`\mu`).
        fixed_point_iters: iterations of the denoiser inverse.
        fixed_point_tol: tolerance of the denoiser inverse.
        drift_tol: warn when a measured inverse error exceeds it (see the engine); ``None``
            turns the check off.
        dc_refine_steps: Newton corrections of the closed-form DC inverse
            (:meth:`DataConsistency.inverse`), one forward CG each.

    Shape:
        ``y``: ``(B, coils, *spatial)`` complex; output ``(B, 1, *spatial)`` complex.

    Raises:
        ValueError: ``mu_init <= 0``, unknown ``memory``/``init``, ``num_unrolls < 1``.

    Example:
        >>> from invseg.recon.simulate import birdcage_maps
        >>> op = SenseOperator(birdcage_maps(2, 16)[None], torch.ones(1, 1, 1, 16))
        >>> y = op.A(torch.randn(1, 1, 16, 16, dtype=torch.complex64))
        >>> model = MoDL(num_unrolls=2, channels=8, layers=3)
        >>> model(y, op).shape
        torch.Size([1, 1, 16, 16])
    """

    def __init__(
        self,
        num_unrolls: int = 10,
        *,
        spatial_dims: int = 2,
        channels: int = 64,
        layers: int = 5,
        shared_weights: bool = True,
        memory: str = "invert",
        cg_iters: int = 10,
        cg_tol: float = 1e-6,
        mu_init: float = 0.05,
        anchor_every: int | None = 2,
        lipschitz: float = 0.9,
        init: str = "adjoint",
        fixed_point_iters: int = 50,
        fixed_point_tol: float = 1e-6,
        drift_tol: float | None = 5e-2,
        dc_refine_steps: int = 1,
    ) -> None:
        super().__init__()
        if isinstance(num_unrolls, bool) or not isinstance(num_unrolls, int) or num_unrolls < 1:
            raise ValueError(f"num_unrolls must be a positive int, got {num_unrolls!r}")
        if init not in _INITS:
            hint = closest(init, _INITS)
            raise ValueError(
                f"unknown init {init!r}; choose one of {_INITS}"
                + (f" (did you mean {hint!r}?)" if hint else "")
            )
        _check_mu(mu_init)
        self.init = init
        denoiser = ResidualDenoiser(spatial_dims, channels, layers, lipschitz=lipschitz)
        dc = DataConsistency(
            mu_init, cg_iters=cg_iters, cg_tol=cg_tol, refine_steps=dc_refine_steps
        )
        unrolls = []
        for i in range(num_unrolls):
            d, c = (
                (denoiser, dc)
                if shared_weights or i == 0
                else (
                    copy.deepcopy(denoiser),
                    copy.deepcopy(dc),
                )
            )
            unrolls.append(
                MoDLUnroll(
                    d, c, fixed_point_iters=fixed_point_iters, fixed_point_tol=fixed_point_tol
                )
            )
        self.chain = InvertibleSequential(
            *unrolls, memory=memory, anchor_every=anchor_every, drift_tol=drift_tol
        )

    @property
    def memory(self) -> str:
        """Memory mechanism of the unroll chain."""
        return self.chain.memory

    @memory.setter
    def memory(self, value: str) -> None:
        self.chain.memory = value

    @property
    def num_unrolls(self) -> int:
        """Number of unrolls."""
        return len(self.chain)

    @property
    def inverse_errors(self) -> dict[int, float]:
        """``{unroll_index: relative error of the rebuilt input}`` from the last backward."""
        return self.chain.inverse_errors

    def _denoisers(self) -> list[ResidualDenoiser]:
        seen: dict[int, ResidualDenoiser] = {}
        for u in self.chain.blocks:
            if isinstance(u.denoiser, ResidualDenoiser):
                seen.setdefault(id(u.denoiser), u.denoiser)
        return list(seen.values())

    def initial(self, y: Tensor, operator: SenseOperator) -> Tensor:
        """:math:`x_0`: zero-filled :math:`A^H y` or CG-SENSE with the first unroll's mu."""
        AHy = operator.A_adjoint(y)  # (B, 1, *spatial)
        if self.init == "adjoint":
            return AHy
        dc = self.chain.blocks[0].dc
        return conjugate_gradient(
            operator.normal, AHy, mu=dc.mu, max_iter=dc.cg_iters, tol=dc.cg_tol
        )

    def forward(self, y: Tensor, operator: SenseOperator) -> Tensor:
        if not isinstance(operator, SenseOperator):
            raise TypeError(f"operator must be a SenseOperator, got {type(operator).__name__}")
        if self.training and torch.is_grad_enabled():
            for d in self._denoisers():
                d.update_spectral_norm()
        x0 = self.initial(y, operator)  # (B, 1, *spatial)
        return self.chain(x0, y, operator)
