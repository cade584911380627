"""iSeg-like infant cases: T1 and T2 with CSF (10), GM (150) and WM (250) labels.

``easy``: adult-like contrasts (WM > GM > CSF on T1). ``hard``: the isointense phase (about
6 months of age), where labelled GM and WM differ by at most 3% on T1 and 6% on T2, with
partial volume from the probability maps, a per-case bias of up to 30% and Rician noise.
``medium``: the same image formation about three months later, WM 5-10% brighter than GM on T1
and 6-12% darker on T2.
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
    rng: np.random.Generator,
    shape: tuple[int, int, int],
    *,
    preset: str = "easy",
    scale: float | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """One case: ``({"T1": int16, "T2": int16}, uint8 labels 0/10/150/250)``."""
    from scipy import ndimage

    maps = deform(rng, templates(shape, scale), fast=preset != "easy")
    probs = np.stack([maps["csf"], maps["gm"], maps["wm"]])
    label = np.where(probs.sum(0) > 0.5, np.asarray(ISEG_LABELS)[probs.argmax(0)], 0)
    images = {}
    for mod, c in _ISEG_CONTRAST.items():
        if preset != "easy":
            images[mod] = _hard_image(rng, mod, probs, label, shape, scale, preset)
            continue
        img = ndimage.gaussian_filter(sum(ci * p for ci, p in zip(c, probs)), 0.5)
        img *= 1.0 + 0.08 * smooth_field(rng, shape, coarse=3)
        img += 0.02 * rng.standard_normal(shape) * (probs.sum(0) > 0.05)
        img = np.clip(img, 0, None) * rng.uniform(300, 900)
        images[mod] = np.round(img).astype(np.int16)
    return images, label.astype(np.uint8)


def _hard_image(
    rng: np.random.Generator,
    mod: str,
    probs: np.ndarray,
    label: np.ndarray,
    shape,
    scale,
    preset: str = "hard",
) -> np.ndarray:
    r"""Isointense contrast: labelled WM and GM differ by a few percent on average.

    The WM intensity is solved for so that the mean of the WM-labelled voxels is
    :math:`1 + \delta` times that of the GM-labelled voxels, partial volume included, with
    :math:`\delta \sim U(-0.03, 0.03)` on T1 and :math:`U(0, 0.06)` on T2 (whatever the
    shape, so the thin, partial-volumed cortex does not make it larger or smaller). The bias
    field, drawn afterwards, moves the measured contrast by a few percent more.
    """
    gm = rng.uniform(0.5, 0.6)
    csf = rng.uniform(0.15, 0.3) if mod == "T1" else rng.uniform(0.9, 1.1)
    if preset == "medium":
        delta = rng.uniform(0.05, 0.10) if mod == "T1" else rng.uniform(-0.12, -0.06)
    else:
        delta = rng.uniform(-0.03, 0.03) if mod == "T1" else rng.uniform(0.0, 0.06)
    m_gm = probs[:, label == ISEG_LABELS[1]].mean(1)  # mean CSF/GM/WM fractions in GM
    m_wm = probs[:, label == ISEG_LABELS[2]].mean(1)
    known = (1 + delta) * (csf * m_gm[0] + gm * m_gm[1]) - csf * m_wm[0] - gm * m_wm[1]
    wm = known / (m_wm[2] - (1 + delta) * m_gm[2])
    vox = max(1.0, min(shape) / 64) if scale is None else 1.0
    img = (csf * probs[0] + gm * probs[1] + wm * probs[2]).astype(np.float32)
    img = contrast.partial_volume(img, rng.uniform(0.5, 1.0) * vox)
    img *= contrast.bias_field(rng, shape)
    img = contrast.rician(rng, img, rng.uniform(0.02, 0.05) * gm) * (probs.sum(0) > 0.05)
    return np.round(img * rng.uniform(300, 900)).astype(np.int16)
