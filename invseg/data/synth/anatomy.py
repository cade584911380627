"""MNI152 anatomy shipped with nilearn: CSF/GM/WM probability maps and their random deformation.

The MNI152 2009a T1 template and its GM/WM probability maps (197x233x189, 1 mm) live inside the
nilearn wheel (``nilearn/datasets/data/``); they are read with nibabel, nothing is downloaded.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["deform", "gaussian_noise_field", "smooth_field", "templates"]


def nilearn_data() -> Path:
    """Folder of the data files inside the installed nilearn wheel (nilearn is not imported)."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "synthesize() needs the MNI152 maps shipped with nilearn: pip install nilearn"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"


@functools.lru_cache(maxsize=1)
def _mni() -> tuple[dict[str, np.ndarray], np.ndarray]:
    """CSF/GM/WM probabilities cropped to the head box (RAS voxel order, 1 mm) and the box mask."""
    import nibabel as nib
    from scipy import ndimage

    folder = nilearn_data()
    maps = {}
    for key in ("t1", "gm", "wm"):
        img = nib.load(folder / f"mni_icbm152_{key}_tal_nlin_sym_09a_converted.nii.gz")
        img = nib.as_closest_canonical(img)
        maps[key] = np.asarray(img.dataobj, dtype=np.float32) / 255.0
    brain = ndimage.binary_fill_holes(ndimage.gaussian_filter(maps["t1"], 1.0) > 0.05)
    idx = np.nonzero(brain)
    box = tuple(slice(max(i.min() - 2, 0), i.max() + 3) for i in idx)
    gm, wm = maps["gm"][box], maps["wm"][box]
    csf = np.clip(brain[box].astype(np.float32) - gm - wm, 0.0, 1.0)
    return {"csf": csf, "gm": gm, "wm": wm}, brain[box]


@functools.lru_cache(maxsize=4)
def templates(shape: tuple[int, int, int], scale: float | None = None) -> dict[str, np.ndarray]:
    """CSF/GM/WM probability maps of shape ``shape`` (RAS voxel order).

    Args:
        shape: output shape.
        scale: ``None`` stretches the brain box to fill ``shape`` (the small CPU shapes); a
            number keeps 1 mm voxels, shrinks the anatomy by ``scale`` (at most as much as
            needed to fit) and centres it with a background margin (native geometries).
    """
    from scipy import ndimage

    maps, _ = _mni()
    box = next(iter(maps.values())).shape
    if scale is None:
        factors = [s / v for s, v in zip(shape, box)]
    else:
        fit = min(0.97 * s / v for s, v in zip(shape, box))
        factors = [min(float(scale), fit)] * 3
    out = {}
    for key, vol in maps.items():
        zoomed = ndimage.zoom(vol, factors, order=1, grid_mode=True, mode="nearest")
        if scale is not None:
            pad = [((s - z) // 2, s - z - (s - z) // 2) for s, z in zip(shape, zoomed.shape)]
            zoomed = np.pad(zoomed, pad)
        out[key] = np.clip(zoomed, 0.0, 1.0)
    return out


def smooth_field(rng: np.random.Generator, shape: Sequence[int], coarse: int = 4) -> np.ndarray:
    """Smooth random field: a ``coarse``-cubed normal grid upsampled with cubic splines."""
    from scipy import ndimage

    grid = rng.standard_normal((coarse,) * len(shape)).astype(np.float32)
    return ndimage.zoom(grid, [s / coarse for s in shape], order=3, grid_mode=True, mode="nearest")


@functools.lru_cache(maxsize=8)
def _k2(shape: tuple[int, ...]) -> np.ndarray:
    """Squared spatial frequencies (cycles/voxel) of an ``rfftn`` of ``shape``."""
    freqs = np.meshgrid(
        *[np.fft.fftfreq(s) for s in shape[:-1]], np.fft.rfftfreq(shape[-1]), indexing="ij"
    )
    return sum(f.astype(np.float32) ** 2 for f in freqs)


def gaussian_noise_field(
    rng: np.random.Generator, shape: Sequence[int], sigma: float
) -> np.ndarray:
    """White noise low-passed by a Gaussian of width ``sigma`` voxels (FFT), unit variance.

    Example:
        >>> f = gaussian_noise_field(np.random.default_rng(0), (16, 16, 8), 2.0)
        >>> f.shape, round(float(f.std()), 3)
        ((16, 16, 8), 1.0)
    """
    shape = tuple(int(s) for s in shape)
    white = rng.standard_normal(shape).astype(np.float32)
    axes = tuple(range(len(shape)))
    spectrum = np.fft.rfftn(white, axes=axes)
    gain = np.exp(-2 * np.pi**2 * sigma**2 * _k2(shape))
    field = np.fft.irfftn(spectrum * gain, s=shape, axes=axes).astype(np.float32)
    return (field - field.mean()) / (field.std() + 1e-8)


def deform(
    rng: np.random.Generator, maps: dict[str, np.ndarray], *, fast: bool = False
) -> dict[str, np.ndarray]:
    """Random smooth deformation + scaling + shift of all maps (same warp for all).

    Args:
        rng: random generator.
        maps: volumes of one shape.
        fast: draw the displacement with :func:`gaussian_noise_field` (FFT) instead of the
            slower cubic upsampling of :func:`smooth_field` (kept for the easy preset's
            reproducibility).
    """
    from scipy import ndimage

    shape = next(iter(maps.values())).shape
    centre = (np.asarray(shape) - 1) / 2
    scale = rng.uniform(0.92, 1.06, size=3)
    shift = rng.uniform(-0.04, 0.04, size=3) * np.asarray(shape)
    amp = 0.025 * min(shape)

    def field() -> np.ndarray:
        if fast:
            return gaussian_noise_field(rng, shape, min(shape) / 6)
        return smooth_field(rng, shape)

    coords = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    src = [
        (c - centre[i] - shift[i]) / scale[i] + centre[i] + amp * field()
        for i, c in enumerate(coords)
    ]
    return {k: ndimage.map_coordinates(v, src, order=1, mode="constant") for k, v in maps.items()}
