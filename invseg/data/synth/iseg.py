"""iSeg-like infant cases: T1 and T2 with CSF (10), GM (150) and WM (250) labels.

``easy``: adult-like contrasts (WM > GM > CSF on T1). ``hard``: the isointense phase (about
6 months of age), where GM and WM differ by a few percent on T1 and a little more on T2, with
partial volume from the probability maps, a per-case bias of up to 30% and Rician noise.
"""

from __future__ import annotations

import numpy as np

from invseg.data.synth import contrast
from invseg.data.synth.anatomy import deform, smooth_field, templates

__all__ = ["ISEG_LABELS", "iseg_case"]

#: iSeg label values of CSF, GM and WM.
ISEG_LABELS = (10, 150, 250)
_ISEG_CONTRAST = {"T1": (0.20, 0.55, 0.80), "T2": (1.00, 0.60, 0.40)}  # CSF, GM, WM


def iseg_case(
    rng: np.random.Generator, shape: tuple[int, int, int], *, preset: str = "easy",
    scale: float | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """One case: ``({"T1": int16, "T2": int16}, uint8 labels 0/10/150/250)``."""
    from scipy import ndimage

    maps = deform(rng, templates(shape, scale))
    probs = np.stack([maps["csf"], maps["gm"], maps["wm"]])
    label = np.where(probs.sum(0) > 0.5, np.asarray(ISEG_LABELS)[probs.argmax(0)], 0)
    images = {}
    for mod, c in _ISEG_CONTRAST.items():
        if preset == "hard":
            images[mod] = _hard_image(rng, mod, probs, shape, scale)
            continue
        img = ndimage.gaussian_filter(sum(ci * p for ci, p in zip(c, probs)), 0.5)
        img *= 1.0 + 0.08 * smooth_field(rng, shape, coarse=3)
        img += 0.02 * rng.standard_normal(shape) * (probs.sum(0) > 0.05)
        img = np.clip(img, 0, None) * rng.uniform(300, 900)
        images[mod] = np.round(img).astype(np.int16)
    return images, label.astype(np.uint8)


def _hard_image(rng, mod: str, probs: np.ndarray, shape, scale) -> np.ndarray:
    """Isointense contrast: WM within +-4% of GM on T1, 3-10% above GM on T2."""
    gm = rng.uniform(0.5, 0.6)
    if mod == "T1":
        c = (rng.uniform(0.15, 0.3), gm, gm * (1 + rng.uniform(-0.04, 0.04)))
    else:
        c = (rng.uniform(0.9, 1.1), gm, gm * (1 + rng.uniform(0.03, 0.10)))
    vox = max(1.0, min(shape) / 64) if scale is None else 1.0
    img = sum(ci * p for ci, p in zip(c, probs)).astype(np.float32)
    img = contrast.partial_volume(img, rng.uniform(0.5, 1.0) * vox)
    img *= contrast.bias_field(rng, shape)
    img = contrast.rician(rng, img, rng.uniform(0.02, 0.05) * gm) * (probs.sum(0) > 0.05)
    return np.round(img * rng.uniform(300, 900)).astype(np.int16)
