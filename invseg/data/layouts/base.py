"""The :class:`Layout` base class: what every on-disk dataset layout knows about itself."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from invseg.data.case import Case, DatasetInfo
from invseg.data.conventions import LabelConvention, get_convention
from invseg.data.errors import DataError

__all__ = ["FileMatch", "Layout", "check_unique"]


@dataclass(frozen=True)
class FileMatch:
    """What a layout reads from one file name: the case, and the modality (or ``"label"``).

    Example:
        >>> FileMatch("BraTS20_Training_001", "t1", "brats2020")
        FileMatch(case_id='BraTS20_Training_001', key='t1', layout='brats2020')
    """

    case_id: str
    key: str
    layout: str


@dataclass(frozen=True)
class Layout:
    """One on-disk dataset layout: how to detect it, list its cases and write predictions.

    Subclasses implement :meth:`discover` (detect + list cases) and, when loose files can be
    grouped into cases by their names, :meth:`match_file`.

    Args:
        name: registry name (``"brats2020"``, ``"brats2023"``, ``"msd"``, ...).
        files: the file pattern, for messages and docs.
        modalities: channel names in network order (empty: read from ``dataset.json``).
        convention: name of the built-in label convention (``None``: from ``dataset.json``).
        label_key: the modality key of the label file in :meth:`match_file` results.
        sep: separator between case id and modality in file names (for messages).
    """

    name: str
    files: str
    modalities: tuple[str, ...] = ()
    convention: str | None = None
    label_key: str = "seg"
    sep: str = "_"

    # ------------------------------------------------------------------ detection
    def discover(self, root: Path) -> DatasetInfo | None:
        """The dataset in ``root`` when it has this layout, else ``None``."""
        raise NotImplementedError

    def match_file(self, stem: str, *, strict: bool = True) -> FileMatch | None:
        """Case id and modality from a file name without extension (``None``: not ours).

        ``strict=False`` (a layout forced by the user) accepts names of a sibling edition.
        """
        return None

    def case_from_files(self, case_id: str, files: Mapping[str, Path]) -> Case:
        """Group the files matched by :meth:`match_file` into one case (all modalities needed).

        Raises:
            DataError: a modality file is missing (the message names the file expected).
        """
        for m in self.modalities:
            if m not in files:
                folder = next(iter(files.values())).parent
                raise DataError(
                    f"{folder / (case_id + self.sep + m)}.*: missing modality {m!r} for case "
                    f"{case_id!r}; pass all {len(self.modalities)} modality files"
                )
        label = files.get(self.label_key)
        return Case(case_id, tuple(files[m] for m in self.modalities), label)

    # ------------------------------------------------------------------ labels
    def label_convention(self) -> LabelConvention | None:
        """The built-in label convention of the layout (``None``: it comes with the dataset)."""
        return get_convention(self.convention) if self.convention else None

    def info(self, root: Path, cases: Sequence[Case], **kw: Any) -> DatasetInfo:
        """A :class:`DatasetInfo` of this layout (``modalities``/``convention`` overridable)."""
        return DatasetInfo(
            root,
            self.name,
            kw.get("modalities", self.modalities),
            kw.get("convention") or self.label_convention(),
            tuple(cases),
        )

    # ------------------------------------------------------------------ predictions
    def prediction_path(self, folder: Path, case_id: str) -> Path:
        """Where the prediction of ``case_id`` goes: ``<folder>/<case_id>.nii.gz``."""
        return Path(folder) / f"{case_id}.nii.gz"

    def write_prediction(
        self,
        labels: np.ndarray,
        folder: Path,
        case_id: str,
        *,
        affine: np.ndarray,
        header: Any = None,
    ) -> Path:
        """Write a native label map (values of the layout's convention) atomically as NIfTI.

        Args:
            labels: ``(X, Y, Z)`` native label values (e.g. 0/1/2/4 for BraTS 2020).
            folder: output folder.
            case_id: the case name; the file is :meth:`prediction_path`.
            affine: voxel-to-world matrix of the input.
            header: NIfTI header of the input (copied), or ``None``.

        Returns:
            The path written.
        """
        return write_nifti(labels, self.prediction_path(folder, case_id), affine, header)


def write_nifti(arr: np.ndarray, path: Path, affine: np.ndarray, header: Any = None) -> Path:
    """Write ``arr`` as NIfTI with the input's affine/header, dtype kept, atomically."""
    import nibabel as nib

    from invseg.data.io import save_image

    img = nib.Nifti1Image(arr, affine, header=header.copy() if header is not None else None)
    img.set_data_dtype(arr.dtype)
    img.header.set_slope_inter(1.0, 0.0)
    save_image(img, path)
    return path


def check_unique(cases: Sequence[Case], where: Path | str) -> None:
    """Raise :class:`DataError` when two cases share an id (their predictions would clash)."""
    seen: dict[str, Case] = {}
    for c in cases:
        if c.case_id in seen:
            raise DataError(
                f"{where}: case id {c.case_id!r} appears twice ({seen[c.case_id].images[0]} and "
                f"{c.images[0]}); predictions would overwrite each other"
            )
        seen[c.case_id] = c
