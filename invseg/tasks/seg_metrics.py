r"""The one segmentation scorer: Dice and surface distances of a case, BraTS rules for empty masks.

Validation during training (:func:`invseg.tasks.seg_data.validation_metrics`), ``invseg
evaluate`` (:mod:`invseg.commands.evaluate`) and ``invseg bench quality`` all score a case
with :func:`score_case`, so one prediction gets one score wherever it is scored.

Per region/class :math:`k` (BraTS-like: TC, WT, ET; iSeg: CSF, GM, WM, background left out),
with :math:`P_k` and :math:`G_k` the predicted and reference masks, :math:`\partial` their
surfaces (edge voxels) and :math:`d(x, \partial Y)` the distance in mm (at the voxel spacing)
from :math:`x` to the nearest voxel of :math:`\partial Y`:

.. math::
    \mathrm{Dice}_k = \frac{2|P_k \cap G_k|}{|P_k| + |G_k|},\qquad
    \mathrm{HD95}_k = \max\Big(\mathrm{P}_{95}\{d(p, \partial G_k)\}_{p\in\partial P_k},\
        \mathrm{P}_{95}\{d(g, \partial P_k)\}_{g\in\partial G_k}\Big)

HD95 is MONAI's (and DeepMind surface-distance's) definition: the larger of the two one-way
95th percentiles (medpy and panoptica pool both distance sets instead, which can differ by a
fraction of a voxel). On request also the average surface distance
:math:`\mathrm{ASD} = \mathrm{mean}\big(\{d(p,\partial G)\}_{p} \cup \{d(g,\partial P)\}_{g}\big)`
(both directions pooled) and the modified Hausdorff distance
:math:`\mathrm{MHD} = \max(\bar d(\partial P,\partial G), \bar d(\partial G,\partial P))`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch

from invseg._choices import check_option

__all__ = [
    "DISTANCES",
    "EMPTY_DISTANCE",
    "case_distances",
    "logit_masks",
    "region_names",
    "score_case",
    "target_masks",
]

#: Distance in mm (the BraTS challenge's, about the diagonal of its 240x240x155 1 mm volume)
#: scored when exactly one of the predicted and reference masks is empty.
EMPTY_DISTANCE = 373.13
#: The surface distances :func:`score_case` can report.
DISTANCES = ("hd95", "asd", "mhd")


def region_names(convention: Any) -> tuple[str, ...]:
    """The scored names of a label convention: its regions, or its classes but background.

    Example:
        >>> from invseg.data import get_convention
        >>> region_names(get_convention("brats")), region_names(get_convention("iseg"))
        (('TC', 'WT', 'ET'), ('CSF', 'GM', 'WM'))
    """
    names = tuple(convention.names)
    return names[1:] if convention.kind == "classes" else names


def case_distances(convention: Any) -> tuple[str, ...]:
    """What ``invseg evaluate`` reports: HD95 for regions; HD95, ASD and MHD for classes."""
    return DISTANCES if convention.kind == "classes" else DISTANCES[:1]


def target_masks(target: Any, convention: Any) -> torch.Tensor:
    """Training target -> one binary mask per scored name, ``(len(region_names), *spatial)``.

    Shape:
        - target: ``(C, *spatial)`` binary regions, or ``(1, *spatial)`` class indices.
        - output: float32 0/1 masks (classes one-hot with the background dropped).

    Example:
        >>> from invseg.data import get_convention
        >>> t = torch.tensor([[[[0.0, 1.0, 3.0]]]])           # iSeg class indices, (1, 1, 1, 3)
        >>> target_masks(t, get_convention("iseg"))[:, 0, 0].tolist()   # CSF, GM, WM
        [[0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
    """
    t = torch.as_tensor(target).as_subclass(torch.Tensor)
    if convention.kind == "classes":
        t = torch.nn.functional.one_hot(t[0].long(), convention.out_channels).movedim(-1, 0)[1:]
    return (t > 0).float()


def logit_masks(logits: Any, convention: Any) -> torch.Tensor:
    """Network output ``(out_channels, *spatial)`` -> the masks of :func:`target_masks`.

    Regions are present where :math:`\\sigma(z) > 0.5`; classes are the arg-max over channels.
    """
    z = torch.as_tensor(logits).as_subclass(torch.Tensor).float()
    if convention.kind == "classes":
        return target_masks(z.argmax(0, keepdim=True), convention)
    return (torch.sigmoid(z) > 0.5).float()


def _surface(metric: str, p: torch.Tensor, g: torch.Tensor, spacing: list[float]) -> float:
    """A MONAI surface distance (mm) of two non-empty ``(1, 1, *spatial)`` masks."""
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    def asd(a: torch.Tensor, b: torch.Tensor, symmetric: bool = False) -> float:
        out = compute_average_surface_distance(
            a, b, include_background=True, symmetric=symmetric, spacing=spacing
        )
        return float(out[0, 0])

    with warnings.catch_warnings():
        # MONAI 1.5-1.6 warns from inside its own helper (get_mask_edges); nothing to fix here.
        warnings.filterwarnings("ignore", ".*always_return_as_numpy", FutureWarning)
        if metric == "hd95":
            hd = compute_hausdorff_distance(
                p, g, include_background=True, percentile=95, spacing=spacing
            )
            return float(hd[0, 0])
        if metric == "asd":  # both directions pooled
            return asd(p, g, symmetric=True)
        return max(asd(p, g), asd(g, p))  # mhd: the larger directed mean


def score_case(
    pred: Any,
    ref: Any,
    names: Sequence[str],
    *,
    spacing: Sequence[float],
    distances: Sequence[str] = ("hd95",),
) -> dict[str, float]:
    """Dice and surface distances (mm) of one case, per region or class.

    Empty masks follow the BraTS challenge's rule, for Dice and every distance alike:

    * reference and prediction both empty: Dice 1, distance 0;
    * exactly one of them empty: Dice 0, distance :data:`EMPTY_DISTANCE` (373.13 mm);
    * both non-empty: MONAI's ``compute_dice`` and surface distances (module docstring).

    So every value is finite and a mean over cases skips nothing.

    Args:
        pred: predicted binary masks ``(C, *spatial)`` (tensor or array; nonzero is inside).
        ref: reference binary masks of the same shape.
        names: one name per channel (e.g. :func:`region_names`).
        spacing: voxel size in mm along the spatial axes.
        distances: which of :data:`DISTANCES` to report, in that column order per name.

    Returns:
        ``{"dice_<name>": ...}`` for every name, then ``"<distance>_<name>"`` per name.

    Raises:
        ValueError: shapes differ, ``names`` does not match the channels, an unknown distance.

    Example:
        >>> ref = torch.zeros(2, 8, 8, 8); ref[:, 2:6, 2:6, 2:6] = 1
        >>> pred = torch.roll(ref, 1, dims=1); pred[1] = 0        # shifted 1 voxel; B empty
        >>> score_case(pred, ref, ["A", "B"], spacing=(2.0, 1.0, 1.0))
        {'dice_A': 0.75, 'dice_B': 0.0, 'hd95_A': 2.0, 'hd95_B': 373.13}
    """
    from monai.metrics import compute_dice

    p = torch.as_tensor(pred).as_subclass(torch.Tensor)[None].float() != 0  # (1, C, *spatial)
    g = torch.as_tensor(ref).as_subclass(torch.Tensor)[None].to(p.device).float() != 0
    if p.shape != g.shape or p.shape[1] != len(names):
        raise ValueError(
            f"score_case needs prediction and reference masks of one shape (C, *spatial) with "
            f"C = len(names) = {len(names)}; got {tuple(p.shape[1:])} and {tuple(g.shape[1:])}"
        )
    for d in distances:
        check_option("distance", d, DISTANCES)
    spacing = [float(s) for s in spacing]
    dice: dict[str, float] = {}
    dist: dict[str, float] = {}
    for k, name in enumerate(names):
        pk, gk = p[:, k : k + 1].float(), g[:, k : k + 1].float()
        has_p, has_g = bool(pk.any()), bool(gk.any())
        for d in distances:
            if has_p and has_g:
                dist[f"{d}_{name}"] = _surface(d, pk, gk, spacing)
            else:
                dist[f"{d}_{name}"] = EMPTY_DISTANCE if has_p or has_g else 0.0
        if has_p and has_g:
            dice[f"dice_{name}"] = float(compute_dice(pk, gk, include_background=True)[0, 0])
        else:
            dice[f"dice_{name}"] = float(has_p == has_g)
    return dice | dist
