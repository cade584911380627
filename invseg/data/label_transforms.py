"""MONAI transform pairs that apply a :class:`~invseg.data.LabelConvention` inside a Compose."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform

from invseg.data.conventions import LabelConvention, get_convention

__all__ = ["ConvertToTarget", "ConvertToTargetd", "ToNativeLabels", "ToNativeLabelsd"]


class ConvertToTarget(Transform):
    """Native label map -> training target of a convention (:meth:`LabelConvention.to_target`).

    Args:
        convention: a :class:`LabelConvention` or a built-in name (``"brats"``, ``"msd"``, ...),
            so the transform can be built from a bundle config.

    Shape:
        ``(1, X, Y, Z)`` -> ``(C, X, Y, Z)`` (regions) or ``(1, X, Y, Z)`` class indices.

    Example:
        >>> import torch
        >>> ConvertToTarget("iseg")(torch.tensor([[[[0, 10, 150, 250]]]])).ravel().tolist()
        [0.0, 1.0, 2.0, 3.0]
    """

    def __init__(self, convention: LabelConvention | str) -> None:
        self.convention = get_convention(convention)

    def __call__(self, label: Any) -> Any:
        return self.convention.to_target(label)


class ConvertToTargetd(MapTransform):
    """Dictionary version of :class:`ConvertToTarget`.

    Example:
        >>> import torch
        >>> d = ConvertToTargetd("label", "brats")({"label": torch.zeros(1, 2, 2, 2)})
        >>> tuple(d["label"].shape)
        (3, 2, 2, 2)
    """

    def __init__(
        self,
        keys: KeysCollection,
        convention: LabelConvention | str,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = ConvertToTarget(convention)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d


class ToNativeLabels(Transform):
    """Probabilities (after sigmoid/softmax) -> native labels (:meth:`LabelConvention.to_native`).

    Args:
        convention: a :class:`LabelConvention` or a built-in name.
        threshold: probability at or above which a region is present (regions only).

    Shape:
        ``(C, X, Y, Z)`` -> ``(1, X, Y, Z)`` uint8.

    Example:
        >>> import torch
        >>> p = torch.tensor([0.9, 0.9, 0.2]).reshape(3, 1, 1, 1)   # TC, WT, not ET
        >>> ToNativeLabels("brats")(p).ravel().tolist()
        [1]
    """

    def __init__(self, convention: LabelConvention | str, *, threshold: float = 0.5) -> None:
        self.convention = get_convention(convention)
        self.threshold = threshold

    def __call__(self, pred: Any) -> Any:
        return self.convention.to_native(pred, threshold=self.threshold)


class ToNativeLabelsd(MapTransform):
    """Dictionary version of :class:`ToNativeLabels`.

    Example:
        >>> import torch
        >>> d = ToNativeLabelsd("pred", "iseg")({"pred": torch.eye(4).reshape(4, 4, 1, 1)})
        >>> d["pred"].ravel().tolist()
        [0, 10, 150, 250]
    """

    def __init__(
        self,
        keys: KeysCollection,
        convention: LabelConvention | str,
        threshold: float = 0.5,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = ToNativeLabels(convention, threshold=threshold)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d
