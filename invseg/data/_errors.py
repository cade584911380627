"""The one exception type of the data layer."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["DataError", "check_choice"]


class DataError(ValueError):
    """A dataset, case or file that cannot be used, with a one-line message for the user.

    The message names the offending file (or folder) first and then the reason, e.g.
    ``"/data/BraTS20_Training_001/BraTS20_Training_001_t1.nii.gz: truncated file (...)"``.
    It subclasses :class:`ValueError` so callers that already catch bad input keep working.

    Example:
        >>> err = DataError("case.nii.gz: contains 3 NaN voxels")
        >>> isinstance(err, ValueError), str(err)
        (True, 'case.nii.gz: contains 3 NaN voxels')
    """


def check_choice(value: object, choices: Iterable[str], *, what: str) -> str:
    """Validate a string option and raise a did-you-mean :class:`ValueError` otherwise.

    Example:
        >>> check_choice("brats", ["brats", "iseg"], what="kind")
        'brats'
    """
    choices = list(choices)
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string, one of {choices}; got {type(value).__name__}")
    if value in choices:
        return value
    close = difflib.get_close_matches(value, choices, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown {what} {value!r}; choose one of {choices}.{hint}")
