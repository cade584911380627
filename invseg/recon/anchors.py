r"""The drift budget of MoDL's anchored inversion: how far apart anchors may be, how loose the
fixed-point stop may run.

Rebuilding an unroll's input from its output amplifies errors (the DC inverse by its condition
number, the denoiser inverse by :math:`1/(1 - L)`) and adds a local error (rounding, the CG and
fixed-point stops). :func:`anchor_spacing` bounds the accumulated error and picks how many
unrolls may be inverted between two kept inputs; :func:`fixed_point_slack` spends what is left of
the budget on a looser fixed-point stop, which is where an inverted unroll spends its time.
"""

from __future__ import annotations

__all__ = ["PLAN_FIXED_POINT_TOL", "anchor_spacing", "fixed_point_slack"]

#: Fixed-point tolerance the automatic anchor spacing is planned with.
PLAN_FIXED_POINT_TOL = 1e-6


def _drift_terms(
    mu: float, lipschitz: float, eps: float, cg_tol: float, refine_steps: int
) -> tuple[float, float]:
    """Per-inversion amplification and the local error without the fixed-point stop."""
    kappa = (1.0 + mu) / mu
    return kappa / (1.0 - lipschitz), (eps * kappa + (cg_tol * kappa) ** (refine_steps + 1)) / (
        1.0 - lipschitz
    )


def anchor_spacing(
    mu: float,
    lipschitz: float,
    *,
    drift_tol: float,
    eps: float,
    cg_tol: float,
    refine_steps: int = 1,
    fixed_point_tol: float = PLAN_FIXED_POINT_TOL,
    max_spacing: int | None = None,
) -> int:
    r"""Anchor spacing :math:`k` that keeps rebuilt unroll inputs within ``drift_tol``.

    One inversion of an unroll amplifies an error in its output by at most
    :math:`a = \kappa / (1 - L)`, :math:`\kappa = (1 + \mu)/\mu` (the DC layer's condition
    number) and :math:`1/(1 - L)` (the denoiser inverse), and adds a local error
    :math:`\delta = (\epsilon\kappa + (\mathrm{cg\_tol}\,\kappa)^{r + 1}
    + \mathrm{fixed\_point\_tol}) / (1 - L)` (rounding, the CG residual left after
    :math:`r` Newton refinements, the fixed-point stop). After :math:`m` inversions from a kept
    input the error is at most :math:`e_m = \delta\sum_{j < m} a^j`; the spacing is
    :math:`k = 1 + \max\{m : e_m \le \mathrm{drift\_tol}\}` (``k - 1`` unrolls inverted
    between two anchors).

    Example:
        >>> anchor_spacing(0.05, 0.9, drift_tol=1e-3, eps=1.2e-7, cg_tol=1e-5)  # float32
        2
        >>> anchor_spacing(0.05, 0.9, drift_tol=1e-3, eps=2.2e-16, cg_tol=1e-9,
        ...                fixed_point_tol=1e-12)  # float64
        5
    """
    amp, base = _drift_terms(mu, lipschitz, eps, cg_tol, refine_steps)
    delta = base + fixed_point_tol / (1.0 - lipschitz)
    m, err = 0, 0.0
    while max_spacing is None or m + 1 < max_spacing:
        err = err * amp + delta  # e_{m+1} = a e_m + delta
        if not err <= drift_tol:
            break
        m += 1
        if m > 10_000:
            break
    return m + 1


def fixed_point_slack(
    spacing: int,
    mu: float,
    lipschitz: float,
    *,
    drift_tol: float,
    eps: float,
    cg_tol: float,
    refine_steps: int = 1,
) -> float:
    r"""The loosest fixed-point tolerance that keeps ``spacing - 1`` inversions within budget.

    Solves :math:`e_{k-1} = \mathrm{drift\_tol}` of :func:`anchor_spacing` for the
    fixed-point stop: :math:`t = \mathrm{drift\_tol}\,(1 - L)/\sum_{j < k-1} a^j
    - \epsilon\kappa - (\mathrm{cg\_tol}\,\kappa)^{r+1}`. With spacing 1 nothing is
    inverted and the result is ``inf``.

    Example:
        >>> t = fixed_point_slack(2, 0.05, 0.9, drift_tol=1e-3, eps=1.2e-7, cg_tol=1e-5)
        >>> round(t, 7)  # 97x looser than the 1e-6 the spacing is planned with
        9.74e-05
    """
    if spacing < 2:
        return float("inf")
    amp, base = _drift_terms(mu, lipschitz, eps, cg_tol, refine_steps)
    total = sum(amp**j for j in range(spacing - 1))
    return (drift_tol / total - base) * (1.0 - lipschitz)
