r"""Simulated multi-coil MRI: phantoms, coil maps, sampling masks and noise.

Everything is deterministic given a seed (an ``int`` or a :class:`numpy.random.Generator`).
Conventions: the image is ``(*spatial)``; k-space is ``(coils, *spatial)``; Cartesian
phase encoding runs along the *last* spatial dim (fastMRI), and for 3D volumes ``(D, H, W)``
the readout is ``D`` and the ``(H, W) = (ky, kz)`` plane is undersampled.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from invseg.recon.fft import fftc

__all__ = [
    "add_complex_noise",
    "beating_phantom",
    "birdcage_maps",
    "cartesian_kt_mask",
    "mni152_slice",
    "poisson_disc_mask",
    "shepp_logan",
    "simulate_kspace",
]

SeedLike = int | np.random.Generator | None

# modified Shepp-Logan (Toft): intensity, a, b, x0, y0, phi (deg)
_SL2D = [
    (1.0, 0.69, 0.92, 0.0, 0.0, 0),
    (-0.8, 0.6624, 0.874, 0.0, -0.0184, 0),
    (-0.2, 0.11, 0.31, 0.22, 0.0, -18),
    (-0.2, 0.16, 0.41, -0.22, 0.0, 18),
    (0.1, 0.21, 0.25, 0.0, 0.35, 0),
    (0.1, 0.046, 0.046, 0.0, 0.1, 0),
    (0.1, 0.046, 0.046, 0.0, -0.1, 0),
    (0.1, 0.046, 0.023, -0.08, -0.605, 0),
    (0.1, 0.023, 0.023, 0.0, -0.606, 0),
    (0.1, 0.023, 0.046, 0.06, -0.605, 0),
]
# 3D modified Shepp-Logan: intensity, a, b, c, x0, y0, z0, phi (deg, about z)
_SL3D = [
    (1.0, 0.69, 0.92, 0.81, 0.0, 0.0, 0.0, 0),
    (-0.8, 0.6624, 0.874, 0.78, 0.0, -0.0184, 0.0, 0),
    (-0.2, 0.11, 0.31, 0.22, 0.22, 0.0, 0.0, -18),
    (-0.2, 0.16, 0.41, 0.28, -0.22, 0.0, 0.0, 18),
    (0.1, 0.21, 0.25, 0.41, 0.0, 0.35, -0.15, 0),
    (0.1, 0.046, 0.046, 0.05, 0.0, 0.1, 0.25, 0),
    (0.1, 0.046, 0.046, 0.05, 0.0, -0.1, 0.25, 0),
    (0.1, 0.046, 0.023, 0.05, -0.08, -0.605, 0.0, 0),
    (0.1, 0.023, 0.023, 0.02, 0.0, -0.606, 0.0, 0),
    (0.1, 0.023, 0.046, 0.02, 0.06, -0.605, 0.0, 0),
]


def _rng(seed: SeedLike) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def _grid(n: int) -> np.ndarray:
    return np.linspace(-1.0, 1.0, n, endpoint=False) + 1.0 / n


def _as_shape(shape: int | Sequence[int], ndim: int) -> tuple[int, ...]:
    out = (int(shape),) * ndim if isinstance(shape, int) else tuple(int(s) for s in shape)
    if len(out) != ndim or min(out) < 1:
        raise ValueError(f"expected {ndim} positive sizes, got {shape!r}")
    return out


def shepp_logan(shape: int | Sequence[int], *, ndim: int = 2) -> Tensor:
    r"""Modified Shepp-Logan phantom (Toft's contrast) in 2D or 3D, values in :math:`[0, 1]`.

    Args:
        shape: size per dim (an int for a square/cubic grid) ``(H, W)`` or ``(D, H, W)``.
        ndim: 2 or 3.

    Returns:
        float32 tensor of ``shape``.

    Example:
        >>> shepp_logan(16).shape
        torch.Size([16, 16])
        >>> float(shepp_logan((8, 8, 8), ndim=3).max()) <= 1.0
        True
    """
    if ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 or 3, got {ndim}")
    shape = _as_shape(shape, ndim)
    if ndim == 2:
        y, x = np.meshgrid(-_grid(shape[0]), _grid(shape[1]), indexing="ij")
        img = np.zeros(shape)
        for A, a, b, x0, y0, phi in _SL2D:
            t = math.radians(phi)
            xr = (x - x0) * math.cos(t) + (y - y0) * math.sin(t)
            yr = -(x - x0) * math.sin(t) + (y - y0) * math.cos(t)
            img[(xr / a) ** 2 + (yr / b) ** 2 <= 1.0] += A
    else:
        z, y, x = np.meshgrid(_grid(shape[0]), -_grid(shape[1]), _grid(shape[2]), indexing="ij")
        img = np.zeros(shape)
        for A, a, b, c, x0, y0, z0, phi in _SL3D:
            t = math.radians(phi)
            xr = (x - x0) * math.cos(t) + (y - y0) * math.sin(t)
            yr = -(x - x0) * math.sin(t) + (y - y0) * math.cos(t)
            img[(xr / a) ** 2 + (yr / b) ** 2 + ((z - z0) / c) ** 2 <= 1.0] += A
    return torch.from_numpy(np.clip(img, 0.0, 1.0).astype(np.float32))


def beating_phantom(
    frames: int, shape: int | Sequence[int], *, amplitude: float = 0.25, cycles: float = 1.0
) -> Tensor:
    r"""2D+time phantom: Shepp-Logan with a bright "heart" ellipse whose axes beat in time.

    The ellipse semi-axes scale as :math:`1 + \mathrm{amplitude}\sin(2\pi\,\mathrm{cycles}\,t/T)`.

    Args:
        frames: number of time frames ``T``.
        shape: ``(H, W)`` (or one int).
        amplitude: relative change of the ellipse axes.
        cycles: number of heart beats over the ``T`` frames.

    Returns:
        float32 tensor ``(T, H, W)`` in :math:`[0, 1]`.

    Example:
        >>> v = beating_phantom(4, 16)
        >>> v.shape, bool((v[0] != v[1]).any())
        (torch.Size([4, 16, 16]), True)
    """
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    shape = _as_shape(shape, 2)
    base = shepp_logan(shape).numpy().astype(np.float64)
    y, x = np.meshgrid(-_grid(shape[0]), _grid(shape[1]), indexing="ij")
    out = np.empty((frames, *shape))
    for t in range(frames):
        s = 1.0 + amplitude * math.sin(2 * math.pi * cycles * t / frames)
        heart = (x / (0.18 * s)) ** 2 + ((y + 0.05) / (0.24 * s)) ** 2 <= 1.0
        out[t] = np.where(heart, 0.9, base)
    return torch.from_numpy(out.astype(np.float32))


def mni152_slice(shape: int | Sequence[int] = 128, *, index: float = 0.5) -> Tensor:
    """Axial slice of the MNI152 2009 T1 template shipped in the nilearn wheel (offline).

    Args:
        shape: output ``(H, W)`` (bilinear resize).
        index: relative axial position in ``[0, 1]``.

    Returns:
        float32 tensor ``(H, W)`` scaled to ``[0, 1]``.

    Raises:
        ImportError: when nilearn is not installed.
    """
    from pathlib import Path

    import nibabel as nib
    import nilearn

    shape = _as_shape(shape, 2)
    path = (
        Path(nilearn.__file__).parent
        / "datasets"
        / "data"
        / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    )
    vol = np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)
    k = round(index * (vol.shape[2] - 1))
    sl = torch.from_numpy(np.rot90(vol[:, :, k]).copy())[None, None]
    sl = torch.nn.functional.interpolate(sl, size=shape, mode="bilinear", align_corners=False)
    sl = sl[0, 0].clamp_min(0)
    return sl / sl.max().clamp_min(1e-12)


def birdcage_maps(
    num_coils: int, shape: int | Sequence[int], *, ndim: int = 2, radius: float = 1.5
) -> Tensor:
    r"""Birdcage-style coil sensitivities, normalised so that :math:`\sum_c |S_c|^2 = 1`.

    Coil :math:`c` sits at angle :math:`2\pi c/N` on a circle of ``radius`` (in units of the
    half field of view) around the readout axis; its map is
    :math:`e^{i(\varphi_c + \theta)} / r`, :math:`r` the distance to the coil.

    Args:
        num_coils: number of coils.
        shape: ``(H, W)`` or ``(D, H, W)`` (or one int).
        ndim: 2 or 3 (3D maps vary smoothly along ``D`` too).
        radius: coil distance from the centre.

    Returns:
        complex64 tensor ``(coils, *shape)``.

    Example:
        >>> S = birdcage_maps(4, 8)
        >>> torch.allclose((S.abs() ** 2).sum(0), torch.ones(8, 8), atol=1e-5)
        True
    """
    if num_coils < 1:
        raise ValueError(f"num_coils must be >= 1, got {num_coils}")
    if ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 or 3, got {ndim}")
    shape = _as_shape(shape, ndim)
    grids = np.meshgrid(*[_grid(n) for n in shape], indexing="ij")
    y, x = grids[-2], grids[-1]
    z = grids[0] if ndim == 3 else 0.0
    maps = []
    for c in range(num_coils):
        ang = 2 * math.pi * c / num_coils
        dx, dy = x - radius * math.cos(ang), y - radius * math.sin(ang)
        zc = 0.0 if ndim == 2 else (0.5 if c % 2 else -0.5)
        r = np.sqrt(dx**2 + dy**2 + (z - zc) ** 2)
        maps.append(np.exp(1j * (np.arctan2(dx, -dy) + ang)) / r)
    S = np.stack(maps)
    S = S / np.sqrt((np.abs(S) ** 2).sum(0, keepdims=True))
    return torch.from_numpy(S.astype(np.complex64))


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
    rng = _rng(seed)
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
    frames: int,
    width: int,
    acceleration: float,
    *,
    calib: int = 4,
    seed: SeedLike = 0,
) -> Tensor:
    r"""1D Cartesian ky-t mask for cine: a different variable-density set of lines per frame.

    Each frame keeps the ``calib`` central lines and draws the remaining
    :math:`\lfloor W/R\rfloor - \mathrm{calib}` lines without replacement from a Gaussian density
    over :math:`k_y`.

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
        >>> bool((m[0] != m[1]).any())
        True
    """
    if acceleration < 1:
        raise ValueError(f"acceleration must be >= 1, got {acceleration}")
    rng = _rng(seed)
    calib = min(calib, width)
    lines = max(round(width / acceleration), calib)
    c0 = width // 2 - calib // 2
    centre = np.arange(c0, c0 + calib)
    k = np.arange(width) - width / 2
    pdf = np.exp(-0.5 * (k / (0.3 * width)) ** 2)
    pdf[centre] = 0
    out = np.zeros((frames, 1, width), dtype=np.float32)
    for t in range(frames):
        out[t, 0, centre] = 1
        if lines > calib:
            extra = rng.choice(width, size=lines - calib, replace=False, p=pdf / pdf.sum())
            out[t, 0, extra] = 1
    return torch.from_numpy(out)


def add_complex_noise(k: Tensor, std: float, *, seed: SeedLike = 0) -> Tensor:
    r"""Add circular complex Gaussian noise :math:`n = \sigma(a + ib)/\sqrt{2}`.

    :math:`a, b \sim N(0, 1)` independent, so :math:`E|n|^2 = \sigma^2`.

    Example:
        >>> k = torch.zeros(2, 4, dtype=torch.complex64)
        >>> add_complex_noise(k, 0.0).abs().max().item()
        0.0
    """
    if std < 0:
        raise ValueError(f"std must be >= 0, got {std}")
    if std == 0:
        return k.clone()
    rng = _rng(seed)
    n = rng.standard_normal((*k.shape, 2)) * (std / math.sqrt(2))
    return k + torch.view_as_complex(torch.from_numpy(n).to(k.real.dtype).contiguous()).to(k.device)


def simulate_kspace(
    image: Tensor,
    coil_maps: Tensor,
    mask: Tensor,
    *,
    fft_ndim: int = 2,
    noise_std: float = 0.0,
    seed: SeedLike = 0,
) -> Tensor:
    r"""Undersampled multi-coil k-space :math:`y = M(\mathcal{F}Sx + n)`.

    Args:
        image: ``(*spatial)`` real or complex.
        coil_maps: ``(coils, *spatial)`` complex.
        mask: broadcastable to ``(coils, *spatial)``.
        fft_ndim: trailing FFT dims.
        noise_std: complex noise standard deviation per sample.
        seed: noise seed.

    Returns:
        complex k-space ``(coils, *spatial)``.

    Example:
        >>> y = simulate_kspace(torch.ones(8, 8), birdcage_maps(2, 8), torch.ones(1, 8))
        >>> y.shape
        torch.Size([2, 8, 8])
    """
    x = image if image.is_complex() else image.to(coil_maps.dtype)
    k = fftc(coil_maps * x, fft_ndim)
    if noise_std > 0:
        k = add_complex_noise(k, noise_std, seed=seed)
    return mask.to(k.real.dtype) * k
