r"""The segmentation training loss, one definition for ``invseg train`` and the benches.

.. math::
    \mathcal{L} = w_\mathrm{dice}\,\mathrm{Dice}(p, y) + w_\mathrm{ce}\,\mathrm{CE}(z, y)
      + w_\mathrm{bce}\,\mathrm{BCE}(z, y)

Region conventions (BraTS: TC, WT, ET overlap) use a sigmoid per channel, :math:`p = \sigma(z)`,
and may add the per-channel binary cross-entropy ``bce``; label conventions (iSeg: one class per
voxel) use a softmax, :math:`p = \mathrm{softmax}(z)`, and may add the softmax cross-entropy
``ce``. A weight that does not apply to the dataset's convention is an error naming the key, so
no key in a run's ``config.yaml`` is silently ignored. The VAE term is added by the task.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from invseg.runtime.config import ConfigError

__all__ = ["dice_loss", "loss_weights", "segmentation_loss"]

#: The loss key that applies to each kind of convention, and the one that does not.
_APPLIES = {"regions": ("bce", "ce"), "classes": ("ce", "bce")}
_WHAT = {"ce": "softmax cross-entropy", "bce": "per-channel binary cross-entropy"}


def dice_loss() -> torch.nn.Module:
    """The training Dice loss for region conventions: sigmoid, squared, smoothing (0, 1e-5).

    Example:
        >>> z = torch.full((1, 1, 2, 2, 2), 10.0); y = torch.zeros(1, 1, 2, 2, 2); y[..., 0] = 1
        >>> round(float(dice_loss()(z, y)), 4)  # 1 - 2*4/(8+4) with sigmoid(10) ~ 1
        0.3333
    """
    from monai.losses import DiceLoss

    return DiceLoss(sigmoid=True, smooth_nr=0.0, smooth_dr=1e-5, squared_pred=True)


def loss_weights(weights: dict[str, float | None], kind: str, name: str) -> dict[str, float]:
    """``{"dice", "ce" | "bce"}`` weights for a convention, unset ones at their defaults.

    ``ce`` (labels) and ``bce`` (regions) default to 1.0 where they apply; the other one must be
    unset or 0.

    Raises:
        ConfigError: a non-zero weight that does not apply to the convention.

    Example:
        >>> loss_weights({"dice": 1.0, "ce": None, "bce": None}, "regions", "brats")
        {'dice': 1.0, 'bce': 1.0}
        >>> loss_weights(  # doctest: +ELLIPSIS
        ...     {"dice": 1.0, "ce": 1.0, "bce": None}, "regions", "brats")
        Traceback (most recent call last):
        ...
        invseg.runtime.coerce.ConfigError: train.loss.ce: softmax cross-entropy needs a label...
    """
    own, other = _APPLIES[kind]
    if weights.get(other):
        raise ConfigError(
            f"train.loss.{other}: {_WHAT[other]} needs a "
            f"{'label' if other == 'ce' else 'region'} convention; '{name}' has "
            f"{'overlapping regions' if kind == 'regions' else 'one label per voxel'}: use "
            f"train.loss.{own} ({_WHAT[own]}) instead"
        )
    value = weights.get(own)
    return {"dice": float(weights.get("dice", 1.0)), own: 1.0 if value is None else float(value)}


def segmentation_loss(weights: dict[str, float], kind: str) -> Callable[[Tensor, Tensor], Tensor]:
    """``loss(logits, target)`` for weights from :func:`loss_weights`.

    ``target``: region masks ``(B, C, ...)`` for ``kind="regions"``, class indices
    ``(B, 1, ...)`` for ``kind="classes"``.

    Example:
        >>> z = torch.zeros(1, 2, 2, 2, 2); y = torch.ones(1, 2, 2, 2, 2)
        >>> round(float(segmentation_loss({"dice": 0.0, "bce": 1.0}, "regions")(z, y)), 4)
        0.6931
    """
    if kind == "classes":
        from monai.losses import DiceCELoss

        return DiceCELoss(
            to_onehot_y=True, softmax=True, lambda_dice=weights["dice"], lambda_ce=weights["ce"]
        )
    dice, w_dice, w_bce = dice_loss(), weights["dice"], weights["bce"]

    def loss(logits: Tensor, target: Tensor) -> Tensor:
        out = w_dice * dice(logits, target) if w_dice else logits.new_zeros(())
        if w_bce:
            bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target.float())
            out = out + w_bce * bce
        return out

    return loss
