"""Validate a case before training or prediction: one clear message per problem."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from invseg.data.errors import DataError

if TYPE_CHECKING:
    from invseg.data.case import Case
    from invseg.data.conventions import LabelConvention

__all__ = ["check_case", "check_cases", "read_image"]


def read_image(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """Read a NIfTI/Analyze file fully: ``(data, affine, voxel sizes)``.

    Trailing singleton dimensions beyond the third are dropped (iSeg Analyze files are
    ``X x Y x Z x 1``). The whole data block is read, so truncated or corrupt files fail here.

    Raises:
        DataError: ``"<file>: <reason>"`` for missing, unreadable, corrupt or truncated files.
    """
    import nibabel as nib

    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file is missing")
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for bad headers
        raise DataError(f"{path}: unreadable image header ({_reason(exc)})") from None
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # EOFError, zlib.error, OSError, ValueError (short mmap)
        raise DataError(f"{path}: corrupt or truncated image data ({_reason(exc)})") from None
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    return data, np.asarray(img.affine, dtype=float), zooms


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def check_case(
    case: Case, *, in_channels: int | None, convention: LabelConvention | None = None
) -> None:
    """Raise :class:`DataError` when a case cannot be used by a model with ``in_channels`` inputs.

    Checks, in order: every file exists and reads completely (header and data: catches corrupt
    headers and truncated ``.nii.gz``); no NaN/inf voxels; 3-D images (or one 4-D file whose
    last axis is the channel axis); all modalities and the label share one spatial shape and
    affine; the channel count equals ``in_channels``; with ``convention``, the label values
    belong to it.

    Args:
        case: the case to check.
        in_channels: input channels of the model (``None``: the channel count is not checked).
        convention: optional label convention to check the label values against.

    Raises:
        DataError: ``"<file>: <reason>"``, one line.
        ValueError: ``in_channels`` is not a positive integer.

    Example:
        >>> import tempfile
        >>> from invseg.data import synthesize
        >>> info = synthesize("iseg", tempfile.mkdtemp(), cases=1, shape=(16, 16, 16))
        >>> check_case(info.cases[0], in_channels=2)
        >>> try:
        ...     check_case(info.cases[0], in_channels=4)
        ... except DataError as err:
        ...     print(str(err).split(": ", 1)[1])
        has 2 channels (T1, T2 files) but the model expects 4
    """
    _check_in_channels(in_channels)
    if not case.images:
        raise DataError(f"{case.case_id}: case has no image files")
    channels = 0
    ref_shape: tuple[int, ...] | None = None
    ref_affine: np.ndarray | None = None
    ref_file: Path | None = None
    files = [*case.images, *([case.label] if case.label is not None else [])]
    for path in files:
        data, affine, _ = read_image(path)
        is_label = path == case.label
        if np.issubdtype(data.dtype, np.floating):
            bad = int(np.count_nonzero(~np.isfinite(data)))
            if bad:
                n_nan = int(np.count_nonzero(np.isnan(data)))
                what = f"{n_nan} NaN" if n_nan == bad else f"{bad} NaN/inf"
                raise DataError(f"{path}: contains {what} voxels")
        if data.ndim == 3:
            n = 1
        elif data.ndim == 4 and not is_label:
            n = data.shape[3]
        else:
            raise DataError(
                f"{path}: has shape {data.shape}; expected a 3-D volume"
                + ("" if is_label else " or a 4-D volume with channels last")
            )
        if not is_label:
            channels += n
        shape = tuple(data.shape[:3])
        if ref_shape is None:
            ref_shape, ref_affine, ref_file = shape, affine, path
        elif shape != ref_shape:
            raise DataError(f"{path}: shape {shape} differs from {ref_file.name} {ref_shape}")
        elif not np.allclose(affine, ref_affine, atol=1e-3):
            raise DataError(
                f"{path}: affine differs from {ref_file.name} "
                f"(max difference {np.abs(affine - ref_affine).max():.3g} mm); resample first"
            )
        if is_label and convention is not None:
            convention.check_values(_Named(data, path))
    if in_channels is not None and channels != in_channels:
        names = ", ".join(_mod_name(p, case.case_id) for p in case.images)
        raise DataError(
            f"{case.images[0]}: has {channels} channels ({names} "
            f"file{'s' if len(case.images) > 1 else ''}) but the model expects {in_channels}"
        )


def check_cases(
    cases: Sequence[Case],
    *,
    in_channels: int | None,
    convention: LabelConvention | None = None,
    workers: int | None = None,
) -> None:
    """:func:`check_case` on every case, several cases at a time; the first problem is raised.

    "First" is in the order of ``cases``, whichever thread found it, so the error is the same on
    every run. Before it is raised, the checks that are running finish and the pending ones are
    cancelled: no reading thread outlives the call.

    Args:
        cases: the cases to check.
        in_channels: input channels of the model (``None``: the channel count is not checked).
        convention: optional label convention to check the label values against.
        workers: threads reading files (default ``min(4, CPUs)``; 1 reads in the caller).

    Raises:
        DataError: ``"<file>: <reason>"``, one line, for the first case with a problem.
        ValueError: ``in_channels`` is not a positive integer.

    Example:
        >>> import tempfile
        >>> from invseg.data import synthesize
        >>> info = synthesize("iseg", tempfile.mkdtemp(), cases=2, shape=(16, 16, 16))
        >>> check_cases(info.cases, in_channels=2, convention=info.convention, workers=2)
    """
    from concurrent.futures import ThreadPoolExecutor

    _check_in_channels(in_channels)
    cases = list(cases)
    n = min(len(cases), workers if workers is not None else min(4, os.cpu_count() or 1))
    if n <= 1:
        for case in cases:
            check_case(case, in_channels=in_channels, convention=convention)
        return
    with ThreadPoolExecutor(n, thread_name_prefix="invseg-check") as pool:
        futures = [
            pool.submit(check_case, c, in_channels=in_channels, convention=convention)
            for c in cases
        ]
        try:
            for future in futures:
                future.result()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def _check_in_channels(in_channels: int | None) -> None:
    if in_channels is not None and (not isinstance(in_channels, int) or in_channels < 1):
        raise ValueError(f"in_channels must be a positive integer or None, got {in_channels!r}")


class _Named(np.ndarray):
    """ndarray carrying a file name, so label-value errors name the file."""

    def __new__(cls, data: np.ndarray, path: Path) -> _Named:
        obj = np.asarray(data).view(cls)
        obj.meta = {"filename_or_obj": str(path)}
        return obj


def _mod_name(path: Path, case_id: str) -> str:
    from invseg.data.naming import split_ext

    stem = split_ext(path)[0]
    return stem[len(case_id) :].lstrip("_-") or stem if stem.startswith(case_id) else stem
