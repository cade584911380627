r"""Image formation: partial-volume blur, bias field, Rician noise, degradations, distractors.

A hard-preset modality is

.. math::
    I(x) = \Big|\,g\,b(x)\,\big(G_\sigma * \textstyle\sum_t p_t\,c_t\big)(x)
        + \sigma_n (n_1(x) + i\,n_2(x))\Big|,

with tissue maps :math:`p_t`, per-case contrasts :math:`c_t`, partial-volume blur
:math:`G_\sigma`, a smooth bias :math:`b` within :math:`1 \pm 0.3`, and complex Gaussian noise
whose magnitude is Rician, of 3-8% of the white-matter intensity.
"""

from __future__ import annotations

import numpy as np

from invseg.data.synth.anatomy import gaussian_noise_field

__all__ = [
    "bias_field",
    "degrade",
    "distractors",
    "partial_volume",
    "rician",
]


def partial_volume(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of width ``sigma`` voxels (the scanner's point-spread function)."""
    from scipy import ndimage

    return ndimage.gaussian_filter(image, sigma) if sigma > 0 else image


def bias_field(rng: np.random.Generator, shape, *, max_amp: float = 0.3) -> np.ndarray:
    """Smooth multiplicative field ``1 + a f`` with ``|a f| <= a``, ``a ~ U(0.1, max_amp)``."""
    f = gaussian_noise_field(rng, shape, min(shape) / 5)
    f /= np.abs(f).max() + 1e-8
    return (1.0 + rng.uniform(0.1, max_amp) * f).astype(np.float32)


def rician(rng: np.random.Generator, image: np.ndarray, sigma: float) -> np.ndarray:
    """Magnitude of ``image`` plus complex Gaussian noise of standard deviation ``sigma``."""
    n1 = rng.standard_normal(image.shape).astype(np.float32)
    n2 = rng.standard_normal(image.shape).astype(np.float32)
    return np.sqrt((image + sigma * n1) ** 2 + (sigma * n2) ** 2)


def degrade(rng: np.random.Generator, image: np.ndarray, scale: float) -> np.ndarray:
    """One acquisition failure: strong blur, or motion-like ghosts along a phase axis."""
    from scipy import ndimage

    if rng.random() < 0.5:
        return ndimage.gaussian_filter(image, rng.uniform(1.2, 2.0) * scale)
    axis = int(rng.integers(0, 2))
    n = image.shape[axis]
    out = image.copy()
    for k in (1, 2):
        shift = round(k * n / rng.uniform(3.0, 5.0))
        amp = rng.uniform(0.08, 0.2) / k
        out += amp * (np.roll(image, shift, axis) + np.roll(image, -shift, axis))
    return out / (1 + 0.3)


def _tubes(rng: np.random.Generator, shape, sigma: float, width: float) -> np.ndarray:
    """Random curved tubes: where two smooth fields are both near zero."""
    a = gaussian_noise_field(rng, shape, sigma)
    b = gaussian_noise_field(rng, shape, sigma)
    return np.clip(1 - np.sqrt(a**2 + b**2) / width, 0, 1)


def distractors(
    rng: np.random.Generator, maps: dict[str, np.ndarray], brain: np.ndarray
) -> dict[str, np.ndarray]:
    """Non-tumour structures (0-1 maps) that imitate tumour on one modality.

    ``vessels`` (curved tubes in sulci and along the surface), ``dura`` (a patchy shell just
    outside the brain) and ``plexus`` (blobs in the ventricles) enhance on T1ce like the
    enhancing rim; ``wmh`` (small white-matter hyperintensities) are bright on FLAIR and T2
    like edema. None of them is labelled.
    """
    from scipy import ndimage

    shape = brain.shape
    scale = max(1.0, min(shape) / 24)
    csf, wm = maps["csf"], maps["wm"]
    vessels = _tubes(rng, shape, 2.5 * scale, rng.uniform(0.08, 0.14)) * (csf + maps["gm"])
    outer = brain > 0.5
    shell = ndimage.binary_dilation(outer, iterations=max(1, round(scale / 2))) & ~outer
    dura = shell * (gaussian_noise_field(rng, shape, 2 * scale) > rng.uniform(0.0, 0.8))
    deep = ndimage.binary_erosion(outer, iterations=max(2, min(shape) // 6))
    ventricles = deep & (csf > 0.6)
    blobs = gaussian_noise_field(rng, shape, 0.8 * scale) > 1.0
    plexus = (ventricles & blobs).astype(np.float32)
    band = ndimage.binary_dilation(ventricles, iterations=max(1, round(scale))) & ~ventricles
    patchy = gaussian_noise_field(rng, shape, 1.5 * scale) > rng.uniform(-0.5, 0.5)
    caps = ndimage.gaussian_filter((band & patchy).astype(np.float32), 0.7)
    spots = gaussian_noise_field(rng, shape, 0.8 * scale)
    wmh = np.clip((spots - rng.uniform(1.6, 2.2)) * 2, 0, 1) * (wm > 0.5)
    return {
        "vessels": ndimage.gaussian_filter(vessels, 0.5),
        "dura": dura.astype(np.float32),
        "plexus": plexus,
        "wmh": wmh.astype(np.float32),
        "caps": caps,
    }
