r"""Synthetic datasets in the real on-disk formats (BraTS, MSD, nnU-Net, iSeg).

Each case starts from the MNI152 2009 template and its GM/WM probability maps that ship
inside the nilearn wheel (:mod:`~invseg.data.synth.anatomy`), moved by a random smooth
deformation. Every modality is then rendered from the tissue maps with its own contrasts, bias
field, gain and noise:

.. math::
    I_m(x) = g_m\,b_m(x)\sum_t p_t(x)\,c_{m,t} + \epsilon,\qquad t \in
    \{\mathrm{CSF}, \mathrm{GM}, \mathrm{WM}, \text{tumour tissues}, \text{look-alikes}\}

Three presets:

- ``"easy"``: one ellipsoid tumour (necrotic core, enhancing ring, edema shell) with its own
  contrast in every modality, or adult-like iSeg contrasts: a small network learns it within
  minutes on a CPU (smoke tests).
- ``"hard"``: 1-3 irregular lesions (multifocal in about a third) covering 0.3-6% of the brain,
  edema along white matter, broken or absent enhancing rims, contrasts that overlap normal
  tissue, unlabelled look-alikes, bias up to 30%, Rician noise of 3-8%; iSeg in the isointense
  phase. Sized to tell models apart (see ``docs/data.rst`` and :func:`label_statistics`);
  ``invseg demo`` uses it too, so its Dice is not saturated.
- ``"medium"``: hard's lesions and look-alikes with less contrast overlap, noise and bias (iSeg:
  WM/GM contrast of 5-12%): what ``invseg bench quality --quick`` trains on, where a few hundred
  CPU steps must separate models.

Modules: :mod:`.anatomy` (templates, deformation, noise fields), :mod:`.lesions` (tumour maps),
:mod:`.contrast` (image formation), :mod:`.brats`, :mod:`.iseg` (cases), :mod:`.writers`
(layouts), :mod:`.stats` (label statistics, intensity baselines).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from invseg._choices import check_option
from invseg.data.case import DatasetInfo
from invseg.data.synth.brats import brats_case
from invseg.data.synth.iseg import iseg_case
from invseg.data.synth.stats import flair_threshold_dice, label_statistics, summarize
from invseg.data.synth.writers import (
    BRATS_LAYOUTS,
    write_brats,
    write_dataset_json,
    write_iseg,
)

__all__ = [
    "NATIVE_SHAPES",
    "PRESETS",
    "flair_threshold_dice",
    "label_statistics",
    "summarize",
    "synthesize",
]

#: The presets of :func:`synthesize`.
PRESETS = ("easy", "medium", "hard")
#: The random stream of each preset (fixed, so adding a preset never changes another's data).
_STREAM = {"easy": None, "hard": 1, "medium": 2}
#: Native geometries at 1 mm (``shape="native"``): BraTS 240x240x155, iSeg 144x192x256.
NATIVE_SHAPES = {"brats": (240, 240, 155), "iseg": (144, 192, 256)}
_NATIVE_SCALE = {"brats": 1.0, "iseg": 0.8}  # anatomy size at 1 mm: adult, infant (~6 months)


def _check_shape(kind: str, shape: Sequence[int] | str) -> tuple[tuple[int, int, int], bool]:
    if isinstance(shape, str):
        check_option("shape", shape, ("native",))
        return NATIVE_SHAPES[kind], True
    shape3 = tuple(int(s) for s in shape)
    if len(shape3) != 3 or min(shape3) < 16:
        raise ValueError(
            f"shape must be 3 sizes of at least 16 voxels or 'native', got {tuple(shape)}"
        )
    return shape3, False  # type: ignore[return-value]


def _check_counts(cases: int, unlabeled: int, spacing: Sequence[float]) -> None:
    if int(cases) < 1 or int(unlabeled) < 0:
        raise ValueError(f"need cases >= 1 and unlabeled >= 0, got {cases} and {unlabeled}")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing must be 3 positive sizes in mm, got {tuple(spacing)}")


def synthesize(
    kind: str,
    root: str | Path,
    *,
    cases: int = 6,
    shape: Sequence[int] | str = (64, 64, 48),
    seed: int = 0,
    layout: str | None = None,
    unlabeled: int = 0,
    preset: str = "easy",
    orientation: str = "RAS",
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    compress: bool = True,
) -> DatasetInfo:
    """Write a synthetic dataset in a real on-disk layout and return its :class:`DatasetInfo`.

    Args:
        kind: ``"brats"`` (brain tumour, 4 modalities) or ``"iseg"`` (infant tissue, T1/T2).
        root: dataset folder to write into (created; files of the same names are replaced).
        cases: number of labelled cases.
        shape: volume shape (32³ and up work; the brain fills the box), or ``"native"``: BraTS
            240x240x155 or iSeg 144x192x256 at 1 mm with a real-size brain and background.
        seed: cases are a deterministic function of ``(seed, case index)`` (and the preset).
        layout: for ``kind="brats"``: ``"brats2020"`` (default: ``BraTS20_Training_001/...``),
            ``"brats2021"``, ``"brats2023"`` (ET label 3), ``"msd"`` (4-D FLAIR/T1w/t1gd/T2w,
            labels 1 edema, 2 non-enhancing, 3 enhancing) or ``"nnunet"`` (``CASE_0000``...,
            nnU-Net BraTS region labels); for ``kind="iseg"``: ``"iseg"`` (Analyze ``.hdr/.img``).
        unlabeled: extra prediction-only cases (BraTS 2020: ``BraTS20_Validation_NNN``; MSD and
            nnU-Net: ``imagesTs``; others: further case numbers without a label file).
        preset: ``"easy"`` (one ellipsoid tumour, distinct contrasts; adult-like iSeg),
            ``"hard"`` (irregular multifocal lesions, overlapping contrasts, look-alikes,
            artefacts; isointense iSeg) or ``"medium"`` (hard's lesions, clearer contrasts).
            See the module docstring.
        orientation: NIfTI axis codes of the stored arrays (``"RAS"``, ``"LPS"``, ...); the
            anatomy stays put in world space. Ignored for Analyze (iSeg), which has no rotation.
        spacing: voxel size in mm along the R, A, S axes.
        compress: ``.nii.gz`` (default) or ``.nii``.

    Returns:
        ``discover(root)``.

    Raises:
        ValueError: unknown ``kind``/``layout``/``preset``, no case, a shape under 16 voxels.

    Example:
        >>> import tempfile
        >>> info = synthesize("brats", tempfile.mkdtemp(), cases=2, shape=(32, 32, 32))
        >>> info.layout, len(info.cases), info.convention.name
        ('brats2020', 2, 'brats')
    """
    kind = check_option("synthetic dataset kind", kind, ("brats", "iseg"))
    layouts = BRATS_LAYOUTS if kind == "brats" else ("iseg",)
    layout = check_option(f"layout for {kind}", layout or layouts[0], layouts)
    preset = check_option("synthetic preset", preset, PRESETS)
    shape3, native = _check_shape(kind, shape)
    _check_counts(cases, unlabeled, spacing)
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    ext = ".nii.gz" if compress else ".nii"
    scale = _NATIVE_SCALE[kind] if native else None
    for i in range(int(cases) + int(unlabeled)):
        # easy keeps the historical streams; other presets get their own
        stream = _STREAM[preset]
        key = [int(seed), i] if stream is None else [int(seed), i, stream]
        rng = np.random.default_rng(key)
        labelled = i < cases
        if kind == "iseg":
            images, label = iseg_case(rng, shape3, preset=preset, scale=scale)
            write_iseg(root, i + 1, images, label if labelled else None, spacing)
        else:
            images, tumour = brats_case(rng, shape3, preset=preset, scale=scale)
            ori = orientation.upper()
            write_brats(root, layout, i, labelled, images, tumour, ori, spacing, ext, int(cases))
    if layout in ("msd", "nnunet"):
        write_dataset_json(root, layout, int(cases), int(unlabeled), ext)

    from invseg.data.layouts import discover

    return discover(root)
