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

``test_cases`` adds a held-out set in the same layout beside the dataset
(:func:`held_out_folder`: ``<root>_test``), from random streams no training case uses.

Modules: :mod:`.anatomy` (templates, deformation, noise fields), :mod:`.lesions` (tumour maps),
:mod:`.contrast` (image formation), :mod:`.brats`, :mod:`.iseg` (cases), :mod:`.writers`
(layouts), :mod:`.stats` (label statistics, intensity baselines).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from invseg._choices import check_option
from invseg.data.case import DatasetInfo
from invseg.data.synth.brats import brats_case
from invseg.data.synth.iseg import iseg_case
from invseg.data.synth.stats import flair_threshold_dice, label_statistics, summarize
from invseg.data.synth.writers import (
    BRATS_LAYOUTS,
    ISEG_LAYOUTS,
    write_brats,
    write_dataset_json,
    write_iseg,
)

__all__ = [
    "NATIVE_SHAPES",
    "PRESETS",
    "flair_threshold_dice",
    "held_out_folder",
    "label_statistics",
    "summarize",
    "synthesize",
]

#: The presets of :func:`synthesize`.
PRESETS = ("easy", "medium", "hard")
#: The random stream of each preset (fixed, so adding a preset never changes another's data).
_STREAM = {"easy": None, "hard": 1, "medium": 2}
#: Tag of the held-out cases' random streams: independent of every training case of any seed.
_HELD_OUT = 7919
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


def held_out_folder(root: str | Path) -> Path:
    """The folder of the held-out cases of the dataset ``root``: ``<root>_test`` beside it.

    Example:
        >>> held_out_folder("data/brats_hard").as_posix()
        'data/brats_hard_test'
    """
    root = Path(root).expanduser()
    return root.with_name(f"{root.name}_test")


def _rng(seed: int, index: int, preset: str, held_out: bool) -> np.random.Generator:
    """The random stream of one case: ``(seed, index, preset)``, tagged for held-out cases."""
    stream = _STREAM[preset]
    if held_out:
        return np.random.default_rng([int(seed), index, stream or 0, _HELD_OUT])
    # easy keeps the historical streams; other presets get their own
    key = [int(seed), index] if stream is None else [int(seed), index, stream]
    return np.random.default_rng(key)


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
    test_cases: int = 0,
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
            nnU-Net BraTS region labels); for ``kind="iseg"``: ``"iseg"`` (Analyze ``.hdr/.img``)
            or ``"nnunet"`` (``iSeg_001_0000``: T1, ``_0001``: T2; labels 0/1/2/3).
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
        test_cases: labelled held-out cases written into :func:`held_out_folder` (``<root>_test``)
            in the same layout, numbered after the cases of ``root`` and drawn from random
            streams of their own: no case of any seed's training set reappears among them.

    Returns:
        ``discover(root)`` (the held-out set: ``discover(held_out_folder(root))``).

    Raises:
        ValueError: unknown ``kind``/``layout``/``preset``, no case, a shape under 16 voxels.

    Example:
        >>> import tempfile
        >>> info = synthesize("brats", tempfile.mkdtemp(), cases=2, shape=(32, 32, 32))
        >>> info.layout, len(info.cases), info.convention.name
        ('brats2020', 2, 'brats')
    """
    kind = check_option("synthetic dataset kind", kind, ("brats", "iseg"))
    layouts = BRATS_LAYOUTS if kind == "brats" else ISEG_LAYOUTS
    layout = check_option(f"layout for {kind}", layout or layouts[0], layouts)
    preset = check_option("synthetic preset", preset, PRESETS)
    shape3, native = _check_shape(kind, shape)
    _check_counts(cases, unlabeled, spacing)
    if int(test_cases) < 0:
        raise ValueError(f"need test_cases >= 0, got {test_cases}")
    root = Path(root).expanduser()
    scale = _NATIVE_SCALE[kind] if native else None
    ext = ".nii.gz" if compress else ".nii"
    write = _Writer(kind, layout, preset, shape3, scale, orientation.upper(), spacing, ext, seed)
    write(root, range(int(cases) + int(unlabeled)), labelled=int(cases), held_out=False)
    if int(test_cases):
        first = int(cases) + int(unlabeled)  # case numbers that never clash with root's
        write(held_out_folder(root), range(first, first + int(test_cases)), held_out=True)

    from invseg.data.layouts import discover

    return discover(root)


@dataclass(frozen=True)
class _Writer:
    """Writes cases of one kind, layout, preset and geometry into dataset folders."""

    kind: str
    layout: str
    preset: str
    shape: tuple[int, int, int]
    scale: float | None  # anatomy size of native geometries; None: the brain fills the box
    orientation: str
    spacing: Sequence[float]
    ext: str
    seed: int

    def __call__(
        self, root: Path, indices: range, *, labelled: int | None = None, held_out: bool
    ) -> None:
        """Write the cases ``indices`` into ``root``: the first ``labelled`` of them (all when
        ``None``) with a label file, the others as prediction-only cases."""
        root.mkdir(parents=True, exist_ok=True)
        n_labelled = len(indices) if labelled is None else labelled
        for k, i in enumerate(indices):
            rng = _rng(self.seed, i, self.preset, held_out)
            has_label = k < n_labelled
            if self.kind == "iseg":
                images, label = iseg_case(rng, self.shape, preset=self.preset, scale=self.scale)
                kw = {"layout": self.layout, "orientation": self.orientation, "ext": self.ext}
                write_iseg(root, i + 1, images, label if has_label else None, self.spacing, **kw)
                continue
            images, tumour = brats_case(rng, self.shape, preset=self.preset, scale=self.scale)
            n_before = indices.start + n_labelled  # case numbers before the unlabelled ones
            args = (images, tumour, self.orientation, self.spacing, self.ext, n_before)
            write_brats(root, self.layout, i, has_label, *args)
        if self.layout in ("msd", "nnunet"):
            unlabeled = len(indices) - n_labelled
            write_dataset_json(
                root, self.layout, n_labelled, unlabeled, self.ext, indices.start, kind=self.kind
            )
