r"""k-space sampling masks: variable-density Poisson disc (2D / ky-kz) and Cartesian ky-t (cine).

Deterministic given a seed (an ``int``, ``None`` or a :class:`numpy.random.Generator`, as
:func:`numpy.random.default_rng` takes). Masks are float32 0/1 tensors that broadcast over the
coils and the readout.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["SeedLike", "cartesian_kt_mask", "poisson_disc_mask"]

SeedLike = int | np.random.Generator | None


def _as_shape(shape: int | Sequence[int], ndim: int) -> tuple[int, ...]:
    out = (int(shape),) * ndim if isinstance(shape, int) else tuple(int(s) for s in shape)
    if len(out) != ndim or min(out) < 1:
        raise ValueError(f"expected {ndim} positive sizes, got {shape!r}")
    return out


def _calib_box(shape: tuple[int, ...], calib: int | Sequence[int]) -> tuple[slice, ...]:
    calib = _as_shape(calib, len(shape)) if not isinstance(calib, int) else (calib,) * len(shape)
    return tuple(
        slice(n // 2 - min(c, n) // 2, n // 2 - min(c, n) // 2 + min(c, n))
        for n, c in zip(shape, calib)
    )


def _poisson_once(shape: tuple[int, int], r0: float, alpha: float, rng) -> np.ndarray:
    ky, kz = np.meshgrid(*[np.arange(n) - n / 2 for n in shape], indexing="ij")
    rho = np.sqrt((ky / (shape[0] / 2)) ** 2 + (kz / (shape[1] / 2)) ** 2) / math.sqrt(2)
    radius = r0 * (1.0 + alpha * rho)
    occ = np.zeros(shape, dtype=bool)
    R = math.ceil(radius.max())
    oy, ox = np.mgrid[-R : R + 1, -R : R + 1]
    dist = np.sqrt(oy**2 + ox**2)
    pad = np.zeros((shape[0] + 2 * R, shape[1] + 2 * R), dtype=bool)
    for flat in rng.permutation(shape[0] * shape[1]):
        i, j = divmod(int(flat), shape[1])
        win = pad[i : i + 2 * R + 1, j : j + 2 * R + 1]
        if not (win & (dist < radius[i, j])).any():
            pad[i + R, j + R] = True
    occ[:] = pad[R:-R, R:-R] if R > 0 else pad
    return occ


def poisson_disc_mask(
    shape: int | Sequence[int],
    acceleration: float,
    *,
    calib: int | Sequence[int] = 8,
    alpha: float = 2.0,
    seed: SeedLike = 0,
    max_tries: int = 14,
) -> Tensor:
    r"""Variable-density Poisson-disc mask on a 2D grid (ky-kz for 3D, or a 2D image).

    Points are drawn by random dart throwing with a minimum distance that grows linearly with
    the normalised k-space radius :math:`\rho`: :math:`r(\rho) = r_0(1 + \alpha\rho)`; :math:`r_0`
    is found by bisection so that the acceleration (including the fully sampled calibration box
    of size ``calib``) is close to ``acceleration``.

    Args:
        shape: ``(ky, kz)`` grid (or one int).
        acceleration: target ratio of grid points to sampled points (``>= 1``).
        calib: side(s) of the fully sampled centre box.
        alpha: variable-density slope (0: uniform density).
        seed: int seed or numpy Generator.
        max_tries: bisection steps.

    Returns:
        float32 mask of ``shape`` with values 0/1.

    Example:
        >>> m = poisson_disc_mask(32, 4.0, calib=6, seed=0)
        >>> 3.0 < m.numel() / float(m.sum()) < 5.0
        True
    """
    shape = _as_shape(shape, 2)
    if acceleration < 1:
        raise ValueError(f"acceleration must be >= 1, got {acceleration}")
    rng = np.random.default_rng(seed)
    state = rng.bit_generator.state
    box = _calib_box(shape, calib)
    n = shape[0] * shape[1]
    lo, hi, best = 0.3, max(shape) / 2.0, None
    for _ in range(max_tries):
        r0 = 0.5 * (lo + hi)
        gen = np.random.Generator(type(rng.bit_generator)())
        gen.bit_generator.state = state
        m = _poisson_once(shape, r0, alpha, gen)
        m[box] = True
        acc = n / m.sum()
        if best is None or abs(acc - acceleration) < abs(best[0] - acceleration):
            best = (acc, m)
        if acc > acceleration:
            hi = r0
        else:
            lo = r0
    return torch.from_numpy(best[1].astype(np.float32))


def cartesian_kt_mask(
    frames: int, width: int, acceleration: float, *, calib: int = 4, seed: SeedLike = 0
) -> Tensor:
    r"""1D Cartesian ky-t mask for cine: a different variable-density set of lines per frame.

    Each frame keeps the ``calib`` central lines and draws the remaining
    :math:`\lfloor W/R\rceil - \mathrm{calib}` lines without replacement from a Gaussian density
    over :math:`k_y`. Lines taken by earlier frames are drawn again only once every line has
    been used (as in VISTA-like ky-t sampling), so the union over frames covers k-space: that
    is what lets a reconstruction share information across time. Independent draws per frame
    would leave most outer lines unsampled in every frame.

    Args:
        frames: number of frames ``T``.
        width: number of phase-encode lines ``W`` (the last spatial dim).
        acceleration: ``R >= 1``.
        calib: fully sampled central lines.
        seed: int seed or numpy Generator.

    Returns:
        float32 mask ``(T, 1, W)`` (broadcasts over the readout ``H``).

    Example:
        >>> m = cartesian_kt_mask(4, 32, 4.0, seed=0)
        >>> m.shape, int(m[0].sum())
        (torch.Size([4, 1, 32]), 8)
        >>> bool((m[0] != m[1]).any()), int(m.amax(0).sum())  # 4 calib + 4 x 4 distinct lines
        (True, 20)
    """
    if acceleration < 1:
        raise ValueError(f"acceleration must be >= 1, got {acceleration}")
    rng = np.random.default_rng(seed)
    calib = min(calib, width)
    lines = max(round(width / acceleration), calib)
    c0 = width // 2 - calib // 2
    centre = np.arange(c0, c0 + calib)
    k = np.arange(width) - width / 2
    pdf = np.exp(-0.5 * (k / (0.3 * width)) ** 2)
    pdf[centre] = 0
    unused = pdf > 0
    out = np.zeros((frames, 1, width), dtype=np.float32)
    for t in range(frames):
        out[t, 0, centre] = 1
        need = lines - calib
        if need > 0 and unused.sum() < need:
            unused = pdf > 0  # every line used once: start a new round
        if need > 0:
            p = np.where(unused, pdf, 0.0)
            extra = rng.choice(width, size=need, replace=False, p=p / p.sum())
            out[t, 0, extra] = 1
            unused[extra] = False
    return torch.from_numpy(out)
