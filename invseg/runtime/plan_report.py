"""One model's memory plan as a row: the peak at a shape, and what fits a budget.

Shared by ``invseg plan`` (a config's model in each memory mode) and ``invseg bench plan`` (the
zoo table): both describe a model as a :class:`Candidate` and call :func:`plan_row`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from invseg.runtime.planner import (
    PeakFit,
    default_sizes,
    fit_peak,
    largest_cube,
    max_batch,
    param_bytes,
    slab_shapes,
    step_bytes,
)

__all__ = ["Candidate", "fit_candidate", "fit_shape", "padded", "plan_row"]


@dataclass(frozen=True)
class Candidate:
    """A model to plan: a name, its memory mode, ``build_fn(shape)`` and its size multiple."""

    name: str
    memory: str
    build_fn: Callable[[tuple[int, int, int]], nn.Module]
    multiple: int
    in_channels: int


def padded(shape: Sequence[int], multiple: int) -> tuple[int, int, int]:
    """``shape`` rounded up to ``multiple`` (what the net runs on inside).

    Example:
        >>> padded((240, 240, 155), 8)
        (240, 240, 160)
    """
    d, h, w = (math.ceil(int(s) / multiple) * multiple for s in shape)
    return d, h, w


def _params(cand: Candidate, shape: tuple[int, int, int]) -> int:
    import torch

    with torch.device("meta"):
        return param_bytes(cand.build_fn(shape))


def fit_candidate(
    cand: Candidate,
    *,
    amp: str | None = None,
    device: str = "cpu",
    sizes: Sequence[int | Sequence[int]] | None = None,
    batch: int = 1,
) -> PeakFit:
    """Measure the candidate's training step at three sizes (:func:`fit_peak`).

    Raises:
        ValueError: a size that is not a multiple of the net's (it would pad inside).
    """
    sizes = sizes or default_sizes(max(cand.multiple, 8))
    sides = [v for s in sizes for v in ((s,) if isinstance(s, int) else s)]
    if any(int(v) % cand.multiple for v in sides):
        raise ValueError(
            f"measured sizes must be multiples of {cand.multiple} for {cand.name}, "
            f"got {list(sizes)}"
        )
    return fit_peak(
        cand.build_fn, cand.in_channels, sizes=sizes, batch=batch, amp=amp, device=device
    )


def fit_shape(
    cand: Candidate, shape: Sequence[int], *, batch: int = 1, amp: str | None = None
) -> PeakFit:
    """An exact CPU fit for ``batch x shape``: slabs of its D x H (:func:`slab_shapes`)."""
    slabs = slab_shapes(padded(shape, cand.multiple), max(cand.multiple, 4))
    return fit_candidate(cand, amp=amp, sizes=slabs, batch=batch)


def plan_row(
    cand: Candidate,
    fit: PeakFit | None,
    *,
    shape_fit: PeakFit | None = None,
    shape: Sequence[int] | None = None,
    batch: int = 1,
    budget_bytes: int | None = None,
    fov: Sequence[int] | None = None,
    target: str = "cuda",
) -> dict[str, Any]:
    """The plan of one candidate.

    With ``shape``: ``peak_bytes`` and its parts at ``batch x shape`` (from ``shape_fit``, else
    ``fit``). With ``budget_bytes``: the largest cube at ``batch`` and the largest batch at
    the padded ``fov``, from ``fit`` (cubes).
    """
    row: dict[str, Any] = {"model": cand.name, "memory": cand.memory, "target": target}
    if shape is not None:
        at_fit = shape_fit or fit
        at = padded(shape, cand.multiple)
        row |= {"shape": list(at), "batch": batch}
        row |= step_bytes(at_fit, _params(cand, at), at, batch=batch, target=target)
        row["measured_shapes"] = [list(s) for s in at_fit.shapes]
        row["extrapolation_error"] = round(at_fit.error(target), 4)
    if budget_bytes is not None and fit is not None:
        mult = max(cand.multiple, 8)
        cube = largest_cube(
            fit, lambda s: _params(cand, (s, s, s)), budget_bytes=budget_bytes, batch=batch,
            multiple=mult, target=target,
        )  # fmt: skip
        row |= {"budget_bytes": budget_bytes, "max_cube": cube.max_cube}
        row["max_cube_peak_bytes"] = cube.total_bytes if cube.max_cube else None
        if fov is not None:
            at = padded(fov, cand.multiple)
            params = _params(cand, at)
            row["fov"] = list(at)
            row["fov_batch"] = max_batch(fit, params, at, budget_bytes=budget_bytes, target=target)
            row["fov_peak_bytes"] = step_bytes(fit, params, at, target=target)["peak_bytes"]
        row["measured_cubes"] = [s[0] for s in fit.shapes]
        row["cube_extrapolation_error"] = round(fit.error(target), 4)
    return row
