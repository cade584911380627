r"""Reconstruction metrics with fastMRI's definitions (``fastmri/evaluate.py``).

* :math:`\mathrm{NMSE} = \|g - p\|_2^2 / \|g\|_2^2`
* :math:`\mathrm{PSNR} = 10\log_{10}(\max(g)^2 / \mathrm{MSE})` (data range = max of the target)
* SSIM: scikit-image with a 7x7 window and ``data_range = max(g)``, averaged over slices
  (the leading dim of a 3D stack).

Inputs may be torch tensors or numpy arrays; complex inputs are compared as magnitudes.
"""

from __future__ import annotations

import numpy as np

__all__ = ["nmse", "psnr", "ssim"]


def _np(x: object) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if np.iscomplexobj(a):
        a = np.abs(a)
    return a.astype(np.float64)


def _pair(gt: object, pred: object) -> tuple[np.ndarray, np.ndarray]:
    g, p = _np(gt), _np(pred)
    if g.shape != p.shape:
        raise ValueError(f"target shape {g.shape} != prediction shape {p.shape}")
    return g, p


def nmse(gt: object, pred: object) -> float:
    r"""Normalised MSE :math:`\|g - p\|^2 / \|g\|^2`.

    Example:
        >>> nmse(np.ones(4), np.zeros(4))
        1.0
    """
    g, p = _pair(gt, pred)
    return float(np.linalg.norm(g - p) ** 2 / np.linalg.norm(g) ** 2)


def psnr(gt: object, pred: object, *, data_range: float | None = None) -> float:
    r"""PSNR in dB with ``data_range = max(gt)`` unless given.

    Example:
        >>> round(psnr(np.array([1.0, 0.0]), np.array([0.9, 0.1])), 2)
        20.0
    """
    g, p = _pair(gt, pred)
    dr = float(g.max()) if data_range is None else float(data_range)
    mse = float(np.mean((g - p) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(dr**2 / mse))


def ssim(gt: object, pred: object, *, data_range: float | None = None) -> float:
    """SSIM (7x7 window) of a 2D image or the mean over the slices of a stack ``(N, H, W)``.

    Example:
        >>> x = np.random.default_rng(0).random((16, 16))
        >>> ssim(x, x)
        1.0
    """
    from skimage.metrics import structural_similarity

    g, p = _pair(gt, pred)
    g2 = g.reshape(-1, *g.shape[-2:])
    p2 = p.reshape(-1, *p.shape[-2:])
    dr = float(g.max()) if data_range is None else float(data_range)
    vals = [structural_similarity(a, b, data_range=dr, win_size=7) for a, b in zip(g2, p2)]
    return float(np.mean(vals))
