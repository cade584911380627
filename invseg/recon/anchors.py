r"""The drift budget of MoDL's anchored inversion: how far apart anchors may be.

Rebuilding an unroll's input from its output amplifies errors (the DC inverse by its condition
number, the denoiser inverse by :math:`1/(1 - L)`) and adds a local error (rounding, the CG and
fixed-point stops). :func:`anchor_spacing` bounds the accumulated error and picks how many
unrolls may be inverted between two kept inputs.
"""

from __future__ import annotations

__all__ = ["anchor_spacing"]


def anchor_spacing(
    mu: float,
    lipschitz: float,
    *,
    drift_tol: float,
    eps: float,
    cg_tol: float,
    refine_steps: int = 1,
    fixed_point_tol: float = 1e-6,
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
    kappa = (1.0 + mu) / mu
    amp = kappa / (1.0 - lipschitz)
    delta = (eps * kappa + (cg_tol * kappa) ** (refine_steps + 1) + fixed_point_tol) / (
        1.0 - lipschitz
    )
    m, err = 0, 0.0
    while max_spacing is None or m + 1 < max_spacing:
        err = err * amp + delta  # e_{m+1} = a e_m + delta
        if not err <= drift_tol:
            break
        m += 1
        if m > 10_000:
            break
    return m + 1
