"""The data model: one :class:`Case` per subject, one :class:`DatasetInfo` per dataset folder."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from invseg.data.conventions import LabelConvention

__all__ = ["Case", "DatasetInfo", "case_dicts"]


@dataclass(frozen=True)
class Case:
    """One subject: its image files and (for training/evaluation) its label file.

    Args:
        case_id: the dataset's own case name (``"BraTS20_Training_001"``, ``"BRATS_001"``,
            ``"subject-1"``); predictions are written as ``<case_id>.nii.gz``.
        images: one file per modality in the dataset's modality order (see
            :attr:`DatasetInfo.modalities`), or a single 4-D file (MSD) holding all channels.
        label: the label file, or ``None`` for a prediction-only case.

    Example:
        >>> from pathlib import Path
        >>> c = Case("s1", (Path("s1_t1.nii.gz"),), None)
        >>> c.has_label
        False
    """

    case_id: str
    images: tuple[Path, ...]
    label: Path | None = None

    @property
    def has_label(self) -> bool:
        """Whether the case has a reference label (training/evaluation) or not (prediction)."""
        return self.label is not None


@dataclass(frozen=True)
class DatasetInfo:
    """What :func:`~invseg.data.discover` found in a dataset folder.

    Args:
        root: the dataset folder.
        layout: ``"brats2020"``, ``"brats2021"``, ``"brats2023"``, ``"msd"``, ``"nnunet"`` or
            ``"iseg"``.
        modalities: channel names in the order the network sees them (BraTS 2020/2021:
            ``t1, t1ce, t2, flair``; 2023+: ``t1n, t1c, t2w, t2f``; iSeg: ``T1, T2``; MSD and
            nnU-Net: from ``dataset.json``).
        convention: how the label values map to network targets.
        cases: all cases, labelled ones and prediction-only ones (``label is None``).
    """

    root: Path
    layout: str
    modalities: tuple[str, ...]
    convention: LabelConvention
    cases: tuple[Case, ...]

    @property
    def in_channels(self) -> int:
        """Number of input channels (modalities)."""
        return len(self.modalities)

    @property
    def labelled(self) -> tuple[Case, ...]:
        """The cases that have a label."""
        return tuple(c for c in self.cases if c.label is not None)


def case_dicts(cases: Iterable[Case]) -> list[dict[str, Any]]:
    """MONAI data dictionaries: ``{"image": path or [paths], "label": path, "case_id": str}``.

    ``"image"`` is a list when the case has one file per modality (LoadImaged stacks them as
    channels) and a single path for a single (4-D) file; ``"label"`` is left out for
    prediction-only cases.

    Example:
        >>> from pathlib import Path
        >>> case_dicts([Case("a", (Path("a.nii"),), Path("a_seg.nii"))])
        [{'image': 'a.nii', 'case_id': 'a', 'label': 'a_seg.nii'}]
    """
    out = []
    for case in cases:
        images = [str(p) for p in case.images]
        d: dict[str, Any] = {
            "image": images[0] if len(images) == 1 else images,
            "case_id": case.case_id,
        }
        if case.label is not None:
            d["label"] = str(case.label)
        out.append(d)
    return out
