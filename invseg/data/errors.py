"""The one exception type of the data layer."""

from __future__ import annotations

__all__ = ["DataError"]


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
