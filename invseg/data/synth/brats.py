"""BraTS-like cases: four modalities (T1, T1ce, T2, FLAIR) and a tumour label map.

``easy``: one ellipsoid tumour whose every part has its own contrast in every modality, so a
small network learns it in minutes. ``hard``: irregular, often multifocal lesions
(:func:`~invseg.data.synth.lesions.hard_tumour`) whose contrasts are drawn per case from ranges
that overlap normal tissue, with unlabelled look-alikes (vessels, dura, choroid plexus on T1ce;
white-matter hyperintensities on FLAIR/T2), partial-volume blur, bias, Rician noise and, now and
then, one degraded modality. ``medium``: hard's lesions and look-alikes, with lesion contrasts
that overlap normal tissue less, dimmer look-alikes, less noise and bias and rarer degradation
(what ``invseg bench quality --quick`` trains on: on ``hard``, 200 CPU steps leave every model
near Dice 0.3, where seeds decide the ranking).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from invseg.data.synth import contrast
from invseg.data.synth.anatomy import deform, smooth_field, templates
from invseg.data.synth.lesions import ED, ET, NCR, NET, easy_tumour, hard_tumour, to_labels

__all__ = ["MODALITIES", "brats_case"]

MODALITIES = ("t1", "t1ce", "t2", "flair")
# Easy tissue contrasts per modality: CSF, GM, WM, necrotic core, edema, enhancing.
_CONTRAST = {
    "t1": (0.25, 0.60, 0.90, 0.30, 0.50, 0.65),
    "t1ce": (0.25, 0.60, 0.90, 0.20, 0.50, 1.60),
    "t2": (1.00, 0.70, 0.45, 1.30, 1.15, 0.80),
    "flair": (0.15, 0.65, 0.50, 0.40, 1.40, 0.90),
}
# Hard contrast ranges per modality: (low, high) for CSF, GM, WM, NCR, NET, ED, ET.
_HARD = {
    "t1": ((0.2, 0.3), (0.55, 0.65), (0.8, 0.95), (0.15, 0.35), (0.45, 0.65),
           (0.45, 0.65), (0.5, 0.75)),
    "t1ce": ((0.2, 0.3), (0.55, 0.65), (0.8, 0.95), (0.15, 0.35), (0.5, 0.8),
             (0.45, 0.7), (1.0, 1.45)),
    "t2": ((0.9, 1.1), (0.65, 0.8), (0.4, 0.5), (1.0, 1.4), (0.8, 1.05),
           (0.75, 1.05), (0.7, 0.95)),
    "flair": ((0.1, 0.25), (0.6, 0.75), (0.45, 0.55), (0.3, 0.8), (0.7, 1.0),
              (0.65, 0.95), (0.7, 1.0)),
}  # fmt: skip
# Look-alikes: modality -> {distractor: (low, high) intensity}.
_DISTRACT = {
    "t1ce": {"vessels": (1.1, 1.6), "dura": (1.0, 1.5), "plexus": (1.0, 1.5)},
    "t2": {"wmh": (0.8, 1.1), "caps": (0.7, 0.9)},
    "flair": {"wmh": (0.75, 1.1), "plexus": (0.6, 0.9), "caps": (0.7, 0.95)},
}
# Medium: lesion contrasts further from normal tissue (same order as _HARD).
_MEDIUM = _HARD | {
    "t1ce": ((0.2, 0.3), (0.55, 0.65), (0.8, 0.95), (0.15, 0.35), (0.5, 0.7),
             (0.45, 0.6), (1.35, 1.7)),
    "t2": ((0.9, 1.1), (0.65, 0.8), (0.4, 0.5), (1.2, 1.5), (0.85, 1.0),
           (1.1, 1.3), (0.7, 0.9)),
    "flair": ((0.1, 0.25), (0.6, 0.75), (0.45, 0.55), (0.3, 0.6), (0.75, 0.95),
              (1.0, 1.2), (0.8, 1.0)),
}  # fmt: skip
_DISTRACT_MEDIUM = {
    "t1ce": {"vessels": (1.0, 1.3), "dura": (0.9, 1.2), "plexus": (0.9, 1.2)},
    "t2": {"wmh": (0.7, 0.85), "caps": (0.65, 0.8)},
    "flair": {"wmh": (0.7, 0.85), "plexus": (0.5, 0.7), "caps": (0.6, 0.75)},
}


@dataclass(frozen=True)
class Difficulty:
    """Image-formation ranges of a lesion preset (``hard`` or ``medium``)."""

    contrast: dict  # modality -> (low, high) per CSF, GM, WM, NCR, NET, ED, ET
    distract: dict  # modality -> {look-alike: (low, high)}
    noise: tuple[float, float]  # Rician sigma, fraction of the WM intensity
    bias: float  # largest bias-field amplitude
    degrade: float  # probability that one modality is degraded
    blur: tuple[float, float]  # partial-volume sigma, voxels


DIFFICULTY = {
    "hard": Difficulty(_HARD, _DISTRACT, (0.03, 0.08), 0.3, 0.25, (0.5, 1.0)),
    "medium": Difficulty(_MEDIUM, _DISTRACT_MEDIUM, (0.02, 0.04), 0.15, 0.1, (0.5, 0.8)),
}


def brats_case(
    rng: np.random.Generator,
    shape: tuple[int, int, int],
    *,
    preset: str = "easy",
    scale: float | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """One case: ``({modality: int16 image}, internal labels 0/1 core/2 edema/3 enhancing)``.

    Args:
        rng: the case's random generator (the case is a function of its state).
        shape: volume shape.
        preset: ``"easy"``, ``"medium"`` or ``"hard"``.
        scale: anatomy placement (see :func:`~invseg.data.synth.anatomy.templates`).
    """
    if preset == "easy":
        return _easy(rng, shape, scale)
    return _lesions(rng, shape, scale, DIFFICULTY[preset])


def _easy(rng, shape, scale) -> tuple[dict[str, np.ndarray], np.ndarray]:
    from scipy import ndimage

    maps = deform(rng, templates(shape, scale))
    brain = np.clip(maps["csf"] + maps["gm"] + maps["wm"], 0, 1)
    tumour = easy_tumour(rng, brain)
    masks = [(tumour == k).astype(np.float32) for k in (1, 2, 3)]
    keep = 1.0 - sum(masks)
    images = {}
    for mod, c in _CONTRAST.items():
        tissue = keep * (c[0] * maps["csf"] + c[1] * maps["gm"] + c[2] * maps["wm"])
        lesion = sum(m * ci for m, ci in zip(masks, c[3:]))
        img = ndimage.gaussian_filter(tissue + lesion, 0.5)
        img *= 1.0 + 0.08 * smooth_field(rng, shape, coarse=3)
        img += 0.02 * rng.standard_normal(shape) * (brain > 0.05)
        img = np.clip(img, 0, None) * rng.uniform(600, 1200)
        images[mod] = np.round(img).astype(np.int16)
    return images, tumour


def _lesions(rng, shape, scale, diff: Difficulty) -> tuple[dict[str, np.ndarray], np.ndarray]:
    maps = deform(rng, templates(shape, scale), fast=True)
    brain = np.clip(maps["csf"] + maps["gm"] + maps["wm"], 0, 1)
    tissue, weight = hard_tumour(rng, maps)
    looks = contrast.distractors(rng, maps, brain)
    lesion = tissue > 0
    vox = max(1.0, min(shape) / 64) if scale is None else 1.0
    degraded = MODALITIES[rng.integers(4)] if rng.random() < diff.degrade else None
    head = brain > 0.05
    images = {}
    for mod in MODALITIES:
        c = [rng.uniform(lo, hi) for lo, hi in diff.contrast[mod]]
        normal = c[0] * maps["csf"] + c[1] * maps["gm"] + c[2] * maps["wm"]
        img = np.where(lesion, 0.0, normal).astype(np.float32)
        for code, ci in ((NCR, c[3]), (NET, c[4]), (ET, c[6])):
            img[tissue == code] = ci
        ed = tissue == ED
        img[ed] = weight[ed] * c[5] + (1 - weight[ed]) * normal[ed]
        for name, (lo, hi) in diff.distract.get(mod, {}).items():
            d = looks[name] * ~lesion
            img = img * (1 - d) + d * rng.uniform(lo, hi)
        img = contrast.partial_volume(img, rng.uniform(*diff.blur) * vox)
        if mod == degraded:
            img = contrast.degrade(rng, img, vox)
        img *= contrast.bias_field(rng, shape, max_amp=diff.bias)
        img = contrast.rician(rng, img, rng.uniform(*diff.noise) * c[2]) * head
        img = img * rng.uniform(600, 1200)
        images[mod] = np.round(img).astype(np.int16)
    return images, to_labels(tissue)
