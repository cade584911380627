r"""Small synthetic datasets in the real on-disk formats (BraTS, MSD, nnU-Net, iSeg).

Each case starts from the MNI152 2009 template and its GM/WM probability maps that ship
inside the nilearn wheel (``nilearn/datasets/data/``, read with nibabel, nothing downloaded),
cropped to the brain and resampled to ``shape``. Per case a random smooth deformation
(coarse random displacement field, scaling and shift) moves the anatomy, and every modality gets
its own tissue contrasts, a smooth bias field, a gain and noise:

.. math::
    I_m(x) = g_m\,b_m(x)\sum_t p_t(x)\,c_{m,t} + \epsilon,\qquad t \in
    \{\mathrm{CSF}, \mathrm{GM}, \mathrm{WM}, \text{tumour labels}\}

BraTS-like tumours are an irregular ellipsoid with a necrotic core (BraTS label 1), an
enhancing rim (4, or 3 for 2023+) and an edema shell (2), each with its own contrast in every
modality (enhancing: bright on T1ce; edema: bright on FLAIR/T2; necrosis: dark on T1), so a
small network learns them within minutes on a CPU. iSeg-like cases label each brain voxel by
its most likely tissue (CSF 10, GM 150, WM 250) with infant-like T1/T2 contrasts.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from invseg._choices import check_option
from invseg.data.case import DatasetInfo
from invseg.data.io import save_image, save_json

__all__ = ["synthesize"]

_BRATS_LAYOUTS = ("brats2020", "brats2021", "brats2023", "msd", "nnunet")
# Tissue contrasts per modality: CSF, GM, WM, necrotic core, edema, enhancing.
_CONTRAST = {
    "t1": (0.25, 0.60, 0.90, 0.30, 0.50, 0.65),
    "t1ce": (0.25, 0.60, 0.90, 0.20, 0.50, 1.60),
    "t2": (1.00, 0.70, 0.45, 1.30, 1.15, 0.80),
    "flair": (0.15, 0.65, 0.50, 0.40, 1.40, 0.90),
}
_ISEG_CONTRAST = {"T1": (0.20, 0.55, 0.80), "T2": (1.00, 0.60, 0.40)}  # CSF, GM, WM


# --------------------------------------------------------------------------- templates
def _nilearn_data() -> Path:
    spec = importlib.util.find_spec("nilearn")  # locate the wheel without importing nilearn
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "synthesize() needs the MNI152 maps shipped with nilearn: pip install nilearn"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"


@functools.lru_cache(maxsize=4)
def _templates(shape: tuple[int, int, int]) -> dict[str, np.ndarray]:
    """CSF/GM/WM probabilities and T1 (RAS voxel order) cropped to the brain, resampled."""
    import nibabel as nib
    from scipy import ndimage

    folder = _nilearn_data()
    maps = {}
    for key in ("t1", "gm", "wm"):
        img = nib.load(folder / f"mni_icbm152_{key}_tal_nlin_sym_09a_converted.nii.gz")
        img = nib.as_closest_canonical(img)
        maps[key] = np.asarray(img.dataobj, dtype=np.float32) / 255.0
    brain = ndimage.binary_fill_holes(ndimage.gaussian_filter(maps["t1"], 1.0) > 0.05)
    idx = np.nonzero(brain)
    box = tuple(slice(max(i.min() - 2, 0), i.max() + 3) for i in idx)
    out = {}
    gm, wm = maps["gm"][box], maps["wm"][box]
    csf = np.clip(brain[box].astype(np.float32) - gm - wm, 0.0, 1.0)
    for key, vol in (("csf", csf), ("gm", gm), ("wm", wm)):
        factors = [s / v for s, v in zip(shape, vol.shape)]
        out[key] = np.clip(
            ndimage.zoom(vol, factors, order=1, grid_mode=True, mode="nearest"), 0.0, 1.0
        )
    return out


# --------------------------------------------------------------------------- per case
def _smooth_field(rng: np.random.Generator, shape: Sequence[int], coarse: int = 4) -> np.ndarray:
    from scipy import ndimage

    grid = rng.standard_normal((coarse,) * len(shape)).astype(np.float32)
    return ndimage.zoom(grid, [s / coarse for s in shape], order=3, grid_mode=True, mode="nearest")


def _deform(rng: np.random.Generator, maps: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Random smooth deformation + scaling + shift of all maps (same warp for all)."""
    from scipy import ndimage

    shape = next(iter(maps.values())).shape
    centre = (np.asarray(shape) - 1) / 2
    scale = rng.uniform(0.92, 1.06, size=3)
    shift = rng.uniform(-0.04, 0.04, size=3) * np.asarray(shape)
    amp = 0.025 * min(shape)
    coords = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    src = [
        (c - centre[i] - shift[i]) / scale[i] + centre[i] + amp * _smooth_field(rng, shape)
        for i, c in enumerate(coords)
    ]
    return {k: ndimage.map_coordinates(v, src, order=1, mode="constant") for k, v in maps.items()}


def _tumour(rng: np.random.Generator, brain: np.ndarray) -> np.ndarray:
    """0 background, 1 necrotic core, 2 edema, 3 enhancing (internal codes)."""
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
    d = d + 0.12 * _smooth_field(rng, shape)
    core, rim = rng.uniform(0.3, 0.4), rng.uniform(0.55, 0.68)
    out = np.zeros(shape, dtype=np.uint8)
    out[(d < 1.0) & (brain > 0.3)] = 2
    out[d < rim] = 3
    out[d < core] = 1
    return out


def _brats_case(
    rng: np.random.Generator, shape: tuple[int, int, int]
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    from scipy import ndimage

    maps = _deform(rng, _templates(shape))
    brain = np.clip(maps["csf"] + maps["gm"] + maps["wm"], 0, 1)
    tumour = _tumour(rng, brain)
    masks = [(tumour == k).astype(np.float32) for k in (1, 2, 3)]
    keep = 1.0 - sum(masks)
    images = {}
    for mod, c in _CONTRAST.items():
        tissue = keep * (c[0] * maps["csf"] + c[1] * maps["gm"] + c[2] * maps["wm"])
        lesion = sum(m * ci for m, ci in zip(masks, c[3:]))
        img = ndimage.gaussian_filter(tissue + lesion, 0.5)
        img *= 1.0 + 0.08 * _smooth_field(rng, shape, coarse=3)
        img += 0.02 * rng.standard_normal(shape) * (brain > 0.05)
        img = np.clip(img, 0, None) * rng.uniform(600, 1200)
        images[mod] = np.round(img).astype(np.int16)
    return images, tumour


def _iseg_case(
    rng: np.random.Generator, shape: tuple[int, int, int]
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    from scipy import ndimage

    maps = _deform(rng, _templates(shape))
    probs = np.stack([maps["csf"], maps["gm"], maps["wm"]])
    label = np.where(probs.sum(0) > 0.5, np.asarray([10, 150, 250])[probs.argmax(0)], 0)
    images = {}
    for mod, c in _ISEG_CONTRAST.items():
        img = ndimage.gaussian_filter(sum(ci * p for ci, p in zip(c, probs)), 0.5)
        img *= 1.0 + 0.08 * _smooth_field(rng, shape, coarse=3)
        img += 0.02 * rng.standard_normal(shape) * (probs.sum(0) > 0.05)
        img = np.clip(img, 0, None) * rng.uniform(300, 900)
        images[mod] = np.round(img).astype(np.int16)
    return images, label.astype(np.uint8)


# --------------------------------------------------------------------------- geometry
def _geometry(
    data: np.ndarray, spacing: Sequence[float], orientation: str
) -> tuple[np.ndarray, np.ndarray]:
    """RAS-ordered ``data`` -> (array, affine) in the requested axis codes; 1st 3 dims spatial."""
    import nibabel as nib

    shape = np.asarray(data.shape[:3])
    affine = np.diag([*map(float, spacing), 1.0])
    # Centre near the world origin, with an offset so the affine is not trivially symmetric.
    affine[:3, 3] = -(shape - 1) / 2 * np.asarray(spacing, dtype=float) + np.array(
        [1.5, -17.0, 9.0]
    )
    ornt = nib.orientations.ornt_transform(
        nib.orientations.axcodes2ornt("RAS"), nib.orientations.axcodes2ornt(tuple(orientation))
    )
    out = nib.orientations.apply_orientation(data, ornt)
    return np.ascontiguousarray(out), affine @ nib.orientations.inv_ornt_aff(ornt, data.shape[:3])


def _nifti(data: np.ndarray, affine: np.ndarray):
    import nibabel as nib

    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return img


# --------------------------------------------------------------------------- public API
def synthesize(
    kind: str,
    out: str | Path,
    *,
    cases: int = 6,
    shape: Sequence[int] = (64, 64, 48),
    seed: int = 0,
    layout: str | None = None,
    unlabeled: int = 0,
    orientation: str = "RAS",
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    compress: bool = True,
) -> DatasetInfo:
    """Write a small synthetic dataset in a real on-disk layout and return its :class:`DatasetInfo`.

    Args:
        kind: ``"brats"`` (brain tumour, 4 modalities) or ``"iseg"`` (infant tissue, T1/T2).
        out: dataset folder to write into (created; files of the same names are replaced).
        cases: number of labelled cases.
        shape: volume shape; 32³ and up work.
        seed: cases are a deterministic function of ``(seed, case index)``.
        layout: for ``kind="brats"``: ``"brats2020"`` (default: ``BraTS20_Training_001/...``),
            ``"brats2021"``, ``"brats2023"`` (ET label 3), ``"msd"`` (4-D FLAIR/T1w/t1gd/T2w,
            labels 1 edema, 2 non-enhancing, 3 enhancing) or ``"nnunet"`` (``CASE_0000``...,
            nnU-Net BraTS region labels); for ``kind="iseg"``: ``"iseg"`` (Analyze ``.hdr/.img``).
        unlabeled: extra prediction-only cases (BraTS 2020: ``BraTS20_Validation_NNN``; MSD and
            nnU-Net: ``imagesTs``; others: further case numbers without a label file).
        orientation: NIfTI axis codes of the stored arrays (``"RAS"``, ``"LPS"``, ...); the
            anatomy stays put in world space. Ignored for Analyze (iSeg), which has no rotation.
        spacing: voxel size in mm along the R, A, S axes.
        compress: ``.nii.gz`` (default) or ``.nii``.

    Returns:
        ``discover(out)``.

    Raises:
        ValueError: unknown ``kind``/``layout``, fewer than 1 case, a shape under 16 voxels.

    Example:
        >>> import tempfile
        >>> info = synthesize("brats", tempfile.mkdtemp(), cases=2, shape=(32, 32, 32))
        >>> info.layout, len(info.cases), info.convention.name
        ('brats2020', 2, 'brats')
    """
    kind = check_option("synthetic dataset kind", kind, ("brats", "iseg"))
    layouts = _BRATS_LAYOUTS if kind == "brats" else ("iseg",)
    layout = check_option(f"layout for {kind}", layout or layouts[0], layouts)
    shape3 = tuple(int(s) for s in shape)
    if len(shape3) != 3 or min(shape3) < 16:
        raise ValueError(f"shape must be 3 sizes of at least 16 voxels, got {tuple(shape)}")
    if int(cases) < 1 or int(unlabeled) < 0:
        raise ValueError(f"need cases >= 1 and unlabeled >= 0, got {cases} and {unlabeled}")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing must be 3 positive sizes in mm, got {tuple(spacing)}")
    orientation = orientation.upper()
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    ext = ".nii.gz" if compress else ".nii"

    total = int(cases) + int(unlabeled)
    for i in range(total):
        rng = np.random.default_rng([int(seed), i])
        labelled = i < cases
        if kind == "iseg":
            images, label = _iseg_case(rng, shape3)
            _write_iseg(out, i + 1, images, label if labelled else None, spacing)
        else:
            images, tumour = _brats_case(rng, shape3)
            _write_brats(
                out, layout, i, labelled, images, tumour, orientation, spacing, ext, int(cases)
            )
    if layout in ("msd", "nnunet"):
        _write_dataset_json(out, layout, int(cases), int(unlabeled), ext)

    from invseg.data.layouts import discover

    return discover(out)


def _write_iseg(
    out: Path, n: int, images: dict[str, np.ndarray], label: np.ndarray | None, spacing
) -> None:
    import nibabel as nib

    affine = np.diag([*map(float, spacing), 1.0])
    files = dict(images) if label is None else {**images, "label": label}
    for mod, data in files.items():
        img = nib.AnalyzeImage(data[..., None], affine)  # iSeg files carry a trailing unit dim
        img.header.set_zooms((*map(float, spacing), 1.0))
        save_image(img, out / f"subject-{n}-{mod}.hdr")


_BRATS_VALUES = {  # internal tumour codes 1 necrotic, 2 edema, 3 enhancing -> native labels
    "brats2020": (0, 1, 2, 4),
    "brats2021": (0, 1, 2, 4),
    "brats2023": (0, 1, 2, 3),
    "msd": (0, 2, 1, 3),
    "nnunet": (0, 2, 1, 3),
}


def _write_brats(
    out: Path,
    layout: str,
    i: int,
    labelled: bool,
    images: dict[str, np.ndarray],
    tumour: np.ndarray,
    orientation: str,
    spacing: Sequence[float],
    ext: str,
    n_labelled: int,
) -> None:
    label = np.asarray(_BRATS_VALUES[layout], dtype=np.uint8)[tumour]

    def put(data: np.ndarray, path: Path) -> None:
        arr, affine = _geometry(data, spacing, orientation)
        save_image(_nifti(arr, affine), path)

    if layout in ("brats2020", "brats2021", "brats2023"):
        if layout == "brats2020":
            case = (
                f"BraTS20_Training_{i + 1:03d}"
                if labelled
                else (f"BraTS20_Validation_{i - n_labelled + 1:03d}")
            )
            names = {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair"}
        elif layout == "brats2021":
            case = f"BraTS2021_{i:05d}"
            names = {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair"}
        else:
            case = f"BraTS-GLI-{i:05d}-000"
            names = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"}
        sep = "-" if layout == "brats2023" else "_"
        for mod, data in images.items():
            put(data, out / case / f"{case}{sep}{names[mod]}{ext}")
        if labelled:
            put(label, out / case / f"{case}{sep}seg{ext}")
        return

    split = "Tr" if labelled else "Ts"
    if layout == "msd":
        case = f"BRATS_{i + 1:03d}"
        stack = np.stack([images[m] for m in ("flair", "t1", "t1ce", "t2")], axis=-1)
        put(stack.astype(np.float32), out / f"images{split}" / f"{case}{ext}")
    else:
        case = f"BraTS_{i + 1:03d}"
        for c, mod in enumerate(("t1", "t1ce", "t2", "flair")):
            put(images[mod], out / f"images{split}" / f"{case}_{c:04d}{ext}")
    if labelled:
        put(label, out / "labelsTr" / f"{case}{ext}")


def _write_dataset_json(out: Path, layout: str, cases: int, unlabeled: int, ext: str) -> None:
    if layout == "msd":
        meta = {
            "name": "BRATS",
            "description": "Synthetic brain tumour data in the MSD Task01 layout (invseg)",
            "tensorImageSize": "4D",
            "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
            "labels": {
                "0": "background",
                "1": "edema",
                "2": "non-enhancing tumor",
                "3": "enhancing tumour",
            },
            "numTraining": cases,
            "numTest": unlabeled,
            "training": [
                {
                    "image": f"./imagesTr/BRATS_{i:03d}{ext}",
                    "label": f"./labelsTr/BRATS_{i:03d}{ext}",
                }
                for i in range(1, cases + 1)
            ],
            "test": [
                f"./imagesTs/BRATS_{i:03d}{ext}" for i in range(cases + 1, cases + unlabeled + 1)
            ],
        }
    else:
        meta = {
            "name": "BraTSSynth",
            "channel_names": {"0": "T1", "1": "T1ce", "2": "T2", "3": "Flair"},
            "labels": {
                "background": 0,
                "whole tumor": [1, 2, 3],
                "tumor core": [2, 3],
                "enhancing tumor": 3,
            },
            "regions_class_order": [1, 2, 3],
            "numTraining": cases,
            "file_ending": ext,
        }
    save_json(meta, out / "dataset.json")
