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

import torch
from torch import Tensor, nn

from invseg._choices import closest
from invseg.engine import InvertibleSequential
from invseg.recon.anchors import anchor_spacing
from invseg.recon.dc import DataConsistency, check_mu
from invseg.recon.denoiser import ResidualDenoiser
from invseg.recon.operators import LinearOperator

__all__ = ["DataConsistency", "MoDL", "MoDLUnroll"]

_INITS = ("adjoint", "sense")


class MoDLUnroll(nn.Module):
    r"""One invertible MoDL unroll: denoiser :math:`R` then data consistency.

    Context (passed by :class:`MoDL` to every unroll): :math:`A^H y` (computed once per
    batch) and the operator.

    The engine uses two hooks: :meth:`reverse` (rebuild the input, then back-propagate) and
    :meth:`reverse_known` (back-propagate with a kept input). Both recompute only the
    denoiser with grad and reuse the known output in the DC layer's implicit backward, so
    backward never repeats the forward CG.

    Args:
        denoiser: a :class:`ResidualDenoiser` (anything with ``forward`` and
            ``inverse(z, max_iter, tol)``).
        dc: a :class:`DataConsistency`.
        fixed_point_iters: iterations of the denoiser inverse.
        fixed_point_tol: tolerance of the denoiser inverse.

    Shape:
        ``x``: ``(B, 1, *spatial)`` complex; context ``AHy``: same shape, and the operator.

    Example:
        >>> from invseg.recon.operators import SenseOperator
        >>> S = torch.ones(1, 1, 8, 8, dtype=torch.complex128)
        >>> op = SenseOperator(S, torch.ones(1, 1, 1, 8))
        >>> u = MoDLUnroll(ResidualDenoiser(channels=4, layers=2), DataConsistency(0.5)).double()
        >>> x = torch.randn(1, 1, 8, 8, dtype=torch.complex128)
        >>> AHy = op.A_adjoint(op.A(x))
        >>> torch.allclose(u.inverse(u(x, AHy, op), AHy, op), x, atol=1e-5)
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

    def forward(
        self,
        x: Tensor,
        AHy: Tensor,
        operator: LinearOperator,
        *,
        output: Tensor | None = None,
    ) -> Tensor:
        z = self.denoiser(x)  # (B, 1, *spatial)
        return self.dc(z, AHy, operator, output=output)

    @torch.no_grad()
    def inverse(self, x_next: Tensor, AHy: Tensor, operator: LinearOperator) -> Tensor:
        z = self.dc.inverse(x_next, AHy, operator)  # (B, 1, *spatial)
        return self.denoiser.inverse(z, max_iter=self.fixed_point_iters, tol=self.fixed_point_tol)

    def reverse_known(self, x: Tensor, y: Tensor, grad_y: Tensor, tape) -> Tensor:
        """Engine hook: back-propagate ``grad_y`` through this unroll at input ``x``, output ``y``.

        Recomputes the denoiser with grad; the DC layer's implicit backward takes the known
        output ``y`` instead of solving again. Returns the gradient of ``x``.
        """
        x_leaf = x.detach().requires_grad_()
        with torch.enable_grad():
            y_again = self(x_leaf, *tape.context, output=y)
        (grad_x,) = tape.vjp(self, [y_again], [grad_y], [x_leaf])
        return grad_x

    def reverse(self, y: Tensor, grad_y: Tensor, tape) -> tuple[Tensor, Tensor]:
        r"""Engine hook: rebuild the input from ``y`` and back-propagate ``grad_y``.

        The fixed-point iterations :math:`x_{k+1} = z - f(x_k)` run with grad, so the last one
        (:math:`\|x_{k+1} - x_k\| \le` ``fixed_point_tol`` :math:`\|z\|`) is also the
        recomputation the backward needs: the denoiser is differentiated at :math:`x_k`, within
        the fixed-point tolerance of the rebuilt input, and no extra denoiser pass runs.
        """
        residual = getattr(self.denoiser, "residual", None)
        if not callable(residual):
            x = self.inverse(y, *tape.context)
            return x, self.reverse_known(x, y, grad_y, tape)
        with torch.no_grad():
            z = self.dc.inverse(y, *tape.context)  # (B, 1, *spatial)
        x = z.detach()
        zn = torch.linalg.vector_norm(z.flatten(1), dim=1).clamp_min(torch.finfo(z.real.dtype).tiny)
        for _ in range(max(self.fixed_point_iters, 1)):
            x_leaf = x.detach().requires_grad_()
            with torch.enable_grad():
                f = residual(x_leaf)  # (B, 1, *spatial)
            x = z - f.detach()
            step = torch.linalg.vector_norm((x - x_leaf.detach()).flatten(1), dim=1)
            if bool((step <= self.fixed_point_tol * zn).all()):
                break
        with torch.enable_grad():
            y_again = self.dc(x_leaf + f, *tape.context, output=y)
        (grad_x,) = tape.vjp(self, [y_again], [grad_y], [x_leaf])
        return x, grad_x


class MoDL(nn.Module):
    r"""MoDL unrolled reconstruction trained with memory-efficient learning (MEL).

    ``model(y, operator)`` (deepinv's ``model(y, physics)``) computes :math:`A^H y` once per
    batch, starts from :math:`x_0 = A^H y` (or a CG-SENSE solve with :math:`\mu`) and runs
    ``num_unrolls`` :class:`MoDLUnroll` blocks through :class:`invseg.engine.InvertibleSequential`
    with ``(A^H y, operator)`` as context. ``operator`` is any
    :class:`~invseg.recon.operators.LinearOperator` (``A``, ``A_adjoint``, ``normal``).

    Gradients: the DC layer is differentiated implicitly (one CG solve per unroll, the same in
    every memory mode). With ``memory="invert"`` forward keeps only the output and the input of
    every ``k``-th unroll (anchors); backward rebuilds the other inputs (closed-form DC inverse,
    fixed-point denoiser inverse) and recomputes only the denoiser with grad: no forward CG is
    repeated, which makes it faster than ``"checkpoint"``.

    Anchors: the DC inverse amplifies errors by up to :math:`(1 + \mu)/\mu` (21 at the floor
    ``mu_min = 0.05``) and the denoiser inverse by :math:`1/(1 - L)`, so pure inversion drifts
    geometrically. ``anchor_every=1`` (default) keeps every unroll's input: the bytes of
    checkpointing, no denoiser inversion in backward, and the DC layer's known output spares
    the forward CG that checkpointing repeats. ``"auto"`` picks the largest spacing whose rebuilt
    inputs stay within ``drift_tol`` given that amplification, the float precision and the
    CG/fixed-point tolerances (:func:`anchor_spacing`: 2 at the defaults; 5 at the floor in
    float64 with ``cg_tol=1e-9``, ``fixed_point_tol=1e-12``),
    and re-picks it at every training forward as :math:`\mu` changes: it keeps fewer inputs but
    pays one fixed-point inversion (about 4 denoiser passes on fresh weights, 15 once the
    denoiser uses its Lipschitz budget) per unroll it does not keep. An int fixes the spacing;
    ``None`` is pure inversion (flat memory, unusable gradients past a few unrolls).

    Drift is measured only when asked: ``drift_every=n`` re-inverts the anchored unrolls on
    every ``n``-th backward, stores :attr:`inverse_errors` and raises an
    :class:`~invseg.engine.InverseDriftWarning` above ``drift_tol``; ``None`` (default) measures
    nothing.

    Args:
        num_unrolls: number of unrolls :math:`N`.
        spatial_dims: 2 for 2D; 3 for 3D slabs and 2D+time.
        channels: hidden channels of the denoiser.
        layers: convolutions of the denoiser.
        shared_weights: one denoiser and one :math:`\mu` for all unrolls (MoDL) or one per unroll.
        memory: ``"invert"``, ``"checkpoint"`` or ``"store"`` (plain autograd).
        cg_iters: CG cap per solve.
        cg_tol: CG relative residual tolerance.
        mu_init: initial :math:`\mu` (``>= mu_min``).
        anchor_every: a positive int (default 1), ``"auto"`` or ``None``.
        lipschitz: certified bound on the denoiser residual's Lipschitz constant.
        init: ``"adjoint"`` (:math:`A^H y`) or ``"sense"`` (CG-SENSE with :math:`\mu`).
        fixed_point_iters: iterations of the denoiser inverse.
        fixed_point_tol: tolerance of the denoiser inverse.
        drift_tol: budget for the relative error of rebuilt inputs (anchor choice and the
            sampled check).
        dc_refine_steps: Newton corrections of the closed-form DC inverse, one CG each.
        mu_min: floor of the learnable :math:`\mu`.
        drift_every: measure drift on every ``n``-th backward (``None``: never).
        lipschitz_grid: frequency grid of the denoiser's certified bound
            (:class:`ResidualDenoiser`).

    Shape:
        ``y``: ``(B, coils, *spatial)`` complex; output ``(B, 1, *spatial)`` complex.

    Raises:
        ValueError: ``mu_init < mu_min``, unknown ``memory``/``init``/``anchor_every``,
            ``num_unrolls < 1``.

    Example:
        >>> from invseg.recon.operators import SenseOperator
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
        cg_iters: int = 30,
        cg_tol: float = 1e-5,
        mu_init: float = 0.05,
        anchor_every: int | str | None = 1,
        lipschitz: float = 0.9,
        init: str = "adjoint",
        fixed_point_iters: int = 50,
        fixed_point_tol: float = 1e-6,
        drift_tol: float | None = 1e-3,
        dc_refine_steps: int = 1,
        mu_min: float = 0.05,
        drift_every: int | None = None,
        lipschitz_grid: int | None = None,
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
        self.auto_anchors = anchor_every == "auto"
        if isinstance(anchor_every, str) and not self.auto_anchors:
            raise ValueError(
                f"anchor_every must be 'auto', a positive int or None, got {anchor_every!r}"
            )
        if self.auto_anchors and drift_tol is None:
            raise ValueError("anchor_every='auto' needs drift_tol (the drift budget), got None")
        check_mu(mu_init, "mu_init")
        self.init, self.drift_budget = init, drift_tol
        denoiser = ResidualDenoiser(
            spatial_dims, channels, layers, lipschitz=lipschitz, grid=lipschitz_grid
        )
        dc = DataConsistency(
            mu_init, cg_iters=cg_iters, cg_tol=cg_tol, refine_steps=dc_refine_steps, mu_min=mu_min
        )
        unrolls = []
        for i in range(num_unrolls):
            d, c = (
                (denoiser, dc)
                if shared_weights or i == 0
                else (copy.deepcopy(denoiser), copy.deepcopy(dc))
            )
            unrolls.append(
                MoDLUnroll(
                    d, c, fixed_point_iters=fixed_point_iters, fixed_point_tol=fixed_point_tol
                )
            )
        self.chain = InvertibleSequential(
            *unrolls,
            memory=memory,
            anchor_every=None if self.auto_anchors else anchor_every,
            drift_tol=drift_tol if drift_every is not None else None,
            drift_every=drift_every or 1,
        )
        if self.auto_anchors:
            self.pick_anchors()

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
    def anchor_every(self) -> int | None:
        """Current anchor spacing of the chain (re-picked by ``"auto"``)."""
        return self.chain.anchor_every

    @property
    def inverse_errors(self) -> dict[int, float]:
        """``{unroll: relative error of the rebuilt input}`` from the last measured backward."""
        return self.chain.inverse_errors

    def _denoisers(self) -> list[ResidualDenoiser]:
        seen: dict[int, ResidualDenoiser] = {}
        for u in self.chain.blocks:
            if isinstance(u.denoiser, ResidualDenoiser):
                seen.setdefault(id(u.denoiser), u.denoiser)
        return list(seen.values())

    def certified_lipschitz(self) -> float:
        """Largest certified Lipschitz bound of the denoiser residuals (see
        :meth:`ResidualDenoiser.certified_lipschitz`)."""
        return max(d.certified_lipschitz() for d in self._denoisers())

    @torch.no_grad()
    def pick_anchors(self) -> int:
        """Set the chain's anchor spacing from the drift budget (:func:`anchor_spacing`)."""
        u0 = self.chain.blocks[0]
        mu = min(float(u.dc.mu) for u in self.chain.blocks)
        lip = max(d.lipschitz for d in self._denoisers()) if self._denoisers() else 0.9
        eps = torch.finfo(u0.dc.raw_mu.dtype).eps
        k = anchor_spacing(
            mu,
            lip,
            drift_tol=self.drift_budget,
            eps=eps,
            cg_tol=u0.dc.cg_tol,
            refine_steps=u0.dc.refine_steps,
            fixed_point_tol=u0.fixed_point_tol,
            max_spacing=self.num_unrolls,
        )
        self.chain.anchor_every = k
        return k

    def initial(self, AHy: Tensor, operator: LinearOperator) -> Tensor:
        """:math:`x_0` from :math:`A^H y`: itself or CG-SENSE with the first unroll's mu."""
        if self.init == "adjoint":
            return AHy
        dc = self.chain.blocks[0].dc
        return dc(torch.zeros_like(AHy), AHy, operator)

    def forward(self, y: Tensor, operator: LinearOperator) -> Tensor:
        if not isinstance(operator, LinearOperator):
            raise TypeError(
                "operator must implement the LinearOperator protocol (A, A_adjoint, normal), "
                f"got {type(operator).__name__}"
            )
        if self.auto_anchors and self.training and torch.is_grad_enabled():
            self.pick_anchors()
        AHy = operator.A_adjoint(y)  # (B, 1, *spatial): once per batch
        x0 = self.initial(AHy, operator)
        return self.chain(x0, AHy, operator)
