r"""Simulated multi-coil MRI: phantoms, coil maps, noise and undersampled k-space.

The sampling masks live in :mod:`invseg.recon.masks` (also importable from here).

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
from invseg.recon.masks import SeedLike, _as_shape, cartesian_kt_mask, poisson_disc_mask

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


def _grid(n: int) -> np.ndarray:
    return np.linspace(-1.0, 1.0, n, endpoint=False) + 1.0 / n


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
    rng = np.random.default_rng(seed)
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
