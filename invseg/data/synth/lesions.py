r"""Brain-tumour label maps: the easy ellipsoid and the hard irregular, multifocal lesions.

Internal tissue codes (:data:`NCR` ... :data:`ET`) are mapped to the native labels of each layout
by the writers; necrosis and non-enhancing core are both BraTS label 1 but get their own
contrasts.

Hard lesions (:func:`hard_tumour`): per case 1 lesion, or 2-3 (multifocal) with probability
``1/3``; the whole tumour covers a log-uniform :math:`0.3\%\text{--}6\%` of the brain. Each core is
the connected part, containing a seed, of the super-level set of

.. math:: s(x) = n(x) - \lVert x - x_0\rVert / r,

(:math:`n` smooth Gaussian noise), thresholded at the quantile that gives the core volume.
Edema is the super-level set of the blurred core weighted by the white-matter map and noise,
so it spreads along white matter; the enhancing tissue is a broken rim of the core, missing
in some lesions and in about a fifth of the cases (ET-empty); necrosis is optional.
"""

from __future__ import annotations

import numpy as np

from invseg.data.synth.anatomy import gaussian_noise_field, smooth_field

__all__ = ["ED", "ET", "NCR", "NET", "easy_tumour", "hard_tumour", "to_labels"]

#: Internal tissue codes: necrosis, edema, enhancing, non-enhancing core.
NCR, ED, ET, NET = 1, 2, 3, 4


def to_labels(tissue: np.ndarray) -> np.ndarray:
    """Internal tissue codes -> internal labels 0 background, 1 core (NCR/NET), 2 edema, 3 ET."""
    return np.asarray([0, 1, 2, 3, 1], dtype=np.uint8)[tissue]


def easy_tumour(rng: np.random.Generator, brain: np.ndarray) -> np.ndarray:
    """One irregular ellipsoid: 1 necrotic core, 2 edema shell, 3 enhancing ring."""
    shape = brain.shape
    inner = brain > 0.9
    margin = [max(2, int(0.22 * s)) for s in shape]
    sl = tuple(slice(m, s - m) for m, s in zip(margin, shape))
    candidates = np.argwhere(inner[sl]) + np.asarray([m for m in margin])
    if len(candidates) == 0:
        candidates = np.argwhere(inner) if inner.any() else np.asarray([np.asarray(shape) // 2])
    centre = candidates[rng.integers(len(candidates))]
    radius = rng.uniform(0.18, 0.26) * min(shape) * rng.uniform(0.8, 1.25, size=3)
    grid = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    d = np.sqrt(sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radius)))
    d = d + 0.12 * smooth_field(rng, shape)
    core, rim = rng.uniform(0.3, 0.4), rng.uniform(0.55, 0.68)
    out = np.zeros(shape, dtype=np.uint8)
    out[(d < 1.0) & (brain > 0.3)] = 2
    out[d < rim] = 3
    out[d < core] = 1
    return out


def _component(mask: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """The connected components of ``mask`` that touch ``seeds``."""
    from scipy import ndimage

    lab, _ = ndimage.label(mask)
    keep = np.unique(lab[seeds & mask])
    return np.isin(lab, keep[keep > 0])


def _top(score: np.ndarray, allowed: np.ndarray, n: int) -> np.ndarray:
    """Mask of the ``n`` highest ``score`` voxels within ``allowed``."""
    values = score[allowed]
    if n >= values.size:
        return allowed.copy()
    thr = np.partition(values, values.size - n)[values.size - n]
    return allowed & (score >= thr)


def _seeds(rng: np.random.Generator, inner: np.ndarray, n: int, spacing: float) -> list:
    """``n`` seed voxels inside ``inner``, at least ``spacing`` voxels apart where possible."""
    candidates = np.argwhere(inner)
    chosen: list[np.ndarray] = []
    for _ in range(50 * n):
        c = candidates[rng.integers(len(candidates))]
        if all(np.linalg.norm(c - o) >= spacing for o in chosen):
            chosen.append(c)
        if len(chosen) == n:
            break
    return chosen


def _rim(core: np.ndarray, width: int) -> np.ndarray:
    from scipy import ndimage

    return core & ~ndimage.binary_erosion(core, iterations=width)


def hard_tumour(
    rng: np.random.Generator, maps: dict[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Irregular 1-3 lesions on deformed anatomy ``maps`` (``csf``, ``gm``, ``wm``).

    Returns:
        ``(tissue, edema_weight)``: internal tissue codes (:data:`NCR`, :data:`ED`, :data:`ET`,
        :data:`NET`) and a 0-1 map of how strongly each edema voxel deviates from normal tissue
        (fading towards the border, as infiltration does).
    """
    from scipy import ndimage

    shape = maps["wm"].shape
    brain = maps["csf"] + maps["gm"] + maps["wm"]
    inside = brain > 0.5
    n_brain = int(inside.sum())
    inner = ndimage.binary_erosion(inside, iterations=max(2, min(shape) // 10))
    inner &= maps["wm"] + maps["gm"] > 0.6
    if not inner.any():
        inner = inside
    n = 1 if rng.random() < 2 / 3 else int(rng.integers(2, 4))
    wt_total = n_brain * np.exp(rng.uniform(np.log(0.005), np.log(0.065)))
    shares = np.sort(rng.dirichlet(np.full(n, 2.0)))[::-1]
    radius = (3 * wt_total / (4 * np.pi)) ** (1 / 3)
    seeds = _seeds(rng, inner, n, spacing=2.2 * radius * max(shares) ** (1 / 3) + 3)
    scale = max(1.0, min(shape) / 24)
    noise = gaussian_noise_field(rng, shape, sigma=1.5 * scale)
    noise2 = gaussian_noise_field(rng, shape, sigma=1.0 * scale)
    grid = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    tissue = np.zeros(shape, dtype=np.uint8)
    weight = np.zeros(shape, dtype=np.float32)
    no_et_case = rng.random() < 0.15
    width = max(1, round(min(shape) / 60))
    for seed, share in zip(seeds, shares):
        wt_n = max(int(share * wt_total), 8)
        core_n = max(int(rng.uniform(0.15, 0.55) * wt_n), 4)
        r = (3 * core_n / (4 * np.pi)) ** (1 / 3)
        dist = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, seed))) / r
        free = inside & (tissue == 0)
        at = np.zeros(shape, dtype=bool)
        at[tuple(seed)] = True
        top = _top(rng.uniform(0.6, 1.2) * noise - dist, free, core_n) | (free & (dist < 0.5))
        core = _component(top, at | (free & (dist < 0.5)))
        spread = ndimage.gaussian_filter(core.astype(np.float32), 1.5 * r + scale)
        pull = spread * (0.15 + maps["wm"]) * np.exp(0.6 * noise2)
        edema = _top(pull, free & ~core & (maps["csf"] < 0.7), max(wt_n - int(core.sum()), 0))
        edema = _component(edema | core, core) & ~core
        tissue[edema] = ED
        if edema.any():
            fade = spread[edema] / (spread[edema].max() + 1e-6)
            weight[edema] = np.clip(2.0 * fade, 0.35, 1.0)
        tissue[core] = NET
        if rng.random() < 0.6:  # optional necrosis: the inner, noisy part of the core
            deep = ndimage.binary_erosion(core, iterations=width + 1)
            tissue[deep & (noise2 + rng.uniform(-0.5, 0.5) > 0)] = NCR
        if not no_et_case and rng.random() < 0.9:  # broken enhancing rim
            rim = _rim(core, width)
            et = rim & (noise2 > np.quantile(noise2, rng.uniform(0.1, 0.6)))
            if not et.any():  # a tiny core: keep its brightest third of the rim
                et = _top(noise2, rim, max(1, int(rim.sum()) // 3))
            tissue[et] = ET
    return tissue, weight
