"""Per-axis strides of the invertible resampling: which spatial axes a squeeze folds.

``2`` folds every axis (a 2×2×2 block into 8 channels); a ``(D, H, W)`` tuple of 1s and 2s such
as nnU-Net's ``(1, 2, 2)`` for thick slices folds only the strided axes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral

_STRIDE_HINT = "2 or a per-axis (D, H, W) tuple of 1s and 2s such as (1, 2, 2)"


def check_stride(stride: int | Sequence[int], *, name: str = "stride") -> tuple[int, int, int]:
    """``stride`` as a ``(D, H, W)`` tuple of 1s and 2s with at least one 2.

    Args:
        stride: ``2`` (every axis) or one entry per spatial axis, e.g. a plans' ``[1, 2, 2]``.
        name: what the argument is called in messages (e.g. a plans entry's key path).

    Raises:
        TypeError: if ``stride`` is not an int or a sequence of ints.
        ValueError: for a wrong length, an entry other than 1 or 2, or all ones (no axis folded).

    Example:
        >>> check_stride(2), check_stride([1, 2, 2])
        ((2, 2, 2), (1, 2, 2))
    """
    scalar = isinstance(stride, Integral) and not isinstance(stride, bool)
    axes = (stride,) * 3 if scalar else stride
    if (
        not isinstance(axes, Sequence)
        or isinstance(axes, str)
        or not all(isinstance(s, Integral) and not isinstance(s, bool) for s in axes)
    ):
        raise TypeError(f"{name} must be {_STRIDE_HINT}; got {type(stride).__name__} {stride!r}.")
    if len(axes) != 3:
        raise ValueError(
            f"{name} needs one entry per spatial axis (D, H, W), got {stride!r} with "
            f"{len(axes)}; write e.g. (1, 2, 2)."
        )
    axes = tuple(int(s) for s in axes)
    if any(s not in (1, 2) for s in axes):
        more = "; chain several down-samplings for a larger factor" if max(axes) > 2 else ""
        raise ValueError(f"{name} must be {_STRIDE_HINT}, got {stride!r}{more}.")
    if axes == (1, 1, 1):
        raise ValueError(
            f"{name}={stride!r} folds no axis into channels, so it resamples nothing; put a 2 on "
            "at least one axis, or leave out the resampling of a stage with stride 1 everywhere."
        )
    return axes


def channel_factor(stride: int | Sequence[int]) -> int:
    """How many channels one input channel becomes: ``prod(stride)`` (8 for ``2``).

    Example:
        >>> channel_factor(2), channel_factor((1, 2, 2)), channel_factor((1, 1, 2))
        (8, 4, 2)
    """
    return math.prod(check_stride(stride))
