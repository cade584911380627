r"""Label conventions: native label values on disk <-> training targets and back.

Two kinds of convention exist:

* ``"regions"`` (BraTS, MSD Task01): nested, overlapping regions trained with a sigmoid per
  channel. The target has one binary channel per region, in the fixed order
  :math:`[\mathrm{TC}, \mathrm{WT}, \mathrm{ET}]` with

  .. math::
      \mathrm{ET} = \{e\},\quad \mathrm{TC} = \{c, e\},\quad \mathrm{WT} = \{c, d, e\}

  where :math:`c` is the necrotic / non-enhancing core label, :math:`d` the edema label and
  :math:`e` the enhancing label. BraTS 2020/2021: :math:`c=1, d=2, e=4`; BraTS 2023+:
  :math:`c=1, d=2, e=3`; MSD Task01: :math:`d=1, c=2, e=3` (MSD's ``dataset.json``: 1 edema,
  2 non-enhancing tumour, 3 enhancing tumour).
* ``"classes"`` (iSeg): mutually exclusive classes trained with a softmax. The target is one
  channel holding the class index :math:`k` of the native value :math:`v_k`
  (iSeg: :math:`(v_0, v_1, v_2, v_3) = (0, 10, 150, 250)` for background, CSF, GM, WM).

:meth:`LabelConvention.to_native` goes back: regions are painted from the outermost to the
innermost (edema where WT, then core where TC, then enhancing where ET), classes by arg-max.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch

from invseg._choices import check_option
from invseg.data.errors import DataError

__all__ = ["CONVENTIONS", "LabelConvention", "get_convention"]

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


def _source(x: Any) -> str:
    """The file a (Meta)Tensor came from, for error messages."""
    meta = getattr(x, "meta", None)
    if isinstance(meta, Mapping) and meta.get("filename_or_obj"):
        return str(meta["filename_or_obj"])
    return "label"


@dataclass(frozen=True)
class LabelConvention:
    r"""How a dataset's native label values map to network targets, and back.

    Args:
        name: short name (``"brats"``, ``"brats2023"``, ``"msd"``, ``"iseg"`` or a custom one).
        kind: ``"regions"`` (sigmoid, overlapping binary channels) or ``"classes"`` (softmax).
        names: one name per output channel (regions) or per class including background.
        regions: for ``kind="regions"``: the native values that belong to each region.
        paint: for ``kind="regions"``: ``(channel, native value)`` pairs applied in order by
            :meth:`to_native`; later pairs overwrite earlier ones (outermost region first).
        class_values: for ``kind="classes"``: the native value of each class index.
        et_label: when set, :meth:`to_target` reuses MONAI's
            ``ConvertToMultiChannelBasedOnBratsClasses(et_label)`` (BraTS numbering only).

    Shape:
        - to_target: ``(1, *spatial)`` or ``(*spatial)`` native labels ->
          ``(out_channels, *spatial)`` float32 for regions, ``(1, *spatial)`` float32 class
          indices for classes.
        - to_native: ``(out_channels, *spatial)`` probabilities (after the activation) or, for
          classes, ``(1, *spatial)`` class indices -> ``(1, *spatial)`` uint8 native labels.
          No batch dimension: decollate batches first.

    Example:
        >>> import numpy as np
        >>> conv = get_convention("brats")
        >>> conv.out_channels, conv.activation, conv.names
        (3, 'sigmoid', ('TC', 'WT', 'ET'))
        >>> lab = np.array([[[0, 1, 2, 4]]], dtype=np.uint8)   # (1, 1, 4): spatial only
        >>> conv.to_target(lab)[:, 0, 0].T.tolist()    # rows: voxels, columns: TC, WT, ET
        [[0.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0]]
        >>> conv.to_native(conv.to_target(lab)).ravel().tolist()
        [0, 1, 2, 4]
    """

    name: str
    kind: str
    names: tuple[str, ...]
    regions: tuple[tuple[int, ...], ...] = ()
    paint: tuple[tuple[int, int], ...] = ()
    class_values: tuple[int, ...] = ()
    et_label: int | None = None

    def __post_init__(self) -> None:
        check_option("convention kind", self.kind, ("regions", "classes"))
        if self.kind == "regions":
            if len(self.regions) != len(self.names) or not self.paint:
                raise ValueError(
                    "a regions convention needs one value set per name and a paint order"
                )
        elif len(self.class_values) != len(self.names):
            raise ValueError("a classes convention needs one native value per class name")

    # ----------------------------------------------------------------- properties
    @property
    def activation(self) -> str:
        """``"sigmoid"`` for regions, ``"softmax"`` for classes."""
        return "sigmoid" if self.kind == "regions" else "softmax"

    @property
    def out_channels(self) -> int:
        """Number of network output channels."""
        return len(self.names)

    @property
    def native_values(self) -> tuple[int, ...]:
        """All label values allowed on disk (background 0 included), sorted."""
        if self.kind == "classes":
            return tuple(sorted(set(self.class_values) | {0}))
        return tuple(sorted({0}.union(*map(set, self.regions))))

    def describe(self) -> str:
        """The name and the values written on disk, with the enhancing-tumour value if any.

        Example:
            >>> get_convention("brats2023").describe(), get_convention("iseg").describe()
            ('brats2023 (0/1/2/3, ET=3)', 'iseg (0/10/150/250)')
        """
        values = "/".join(str(v) for v in self.native_values)
        if self.kind == "regions" and "ET" in self.names:
            return f"{self.name} ({values}, ET={dict(self.paint)[self.names.index('ET')]})"
        return f"{self.name} ({values})"

    # ----------------------------------------------------------------- conversion
    def check_values(self, label: np.ndarray | torch.Tensor) -> None:
        """Raise :class:`DataError` when ``label`` holds values outside :attr:`native_values`."""
        found = _unique_values(label)
        bad = sorted(found - set(self.native_values))
        if not bad:
            return
        hint = "pick the right convention"
        if self.kind == "classes" and set(bad) <= set(range(1, len(self.class_values))):
            stored = ", ".join(f"{v} ({n})" for v, n in zip(self.class_values, self.names))
            hint = f"they look like class indices; {self.name} stores {stored}"
        raise DataError(
            f"{_source(label)}: label values {bad} are not part of the {self.name!r} "
            f"convention (allowed: {list(self.native_values)}); {hint}"
        )

    def to_target(self, label: ArrayT) -> ArrayT:
        """Native labels -> training target (see the class docstring for shapes)."""
        is_numpy = isinstance(label, np.ndarray)
        t = torch.as_tensor(label) if is_numpy else label
        if t.ndim == 4 and t.shape[0] == 1:  # channel-first 3-D label
            t = t[0]
        self.check_values(t)
        if self.kind == "regions":
            if self.et_label is not None:
                from monai.transforms import ConvertToMultiChannelBasedOnBratsClasses

                out = ConvertToMultiChannelBasedOnBratsClasses(et_label=self.et_label)(t)
            else:
                out = torch.stack([_isin(t, vals) for vals in self.regions], dim=0)
        else:
            lut = torch.zeros(max(self.native_values) + 1, dtype=torch.float32)
            for index, value in enumerate(self.class_values):
                lut[value] = index
            out = lut.to(t.device)[t.long()][None]
            if hasattr(t, "meta"):  # keep MetaTensor metadata (affine, filename)
                out = type(t)(out, meta=t.meta)
        out = out.float()
        return out.numpy() if is_numpy else out

    def to_native(self, pred: ArrayT, *, threshold: float = 0.5) -> ArrayT:
        """Network output (after sigmoid/softmax) -> native labels ``(1, *spatial)`` uint8.

        Args:
            pred: ``(out_channels, *spatial)`` probabilities; for classes also ``(1, *spatial)``
                class indices.
            threshold: regions are present where the probability is ``>= threshold``.

        Raises:
            ValueError: when the channel count does not fit the convention.
        """
        is_numpy = isinstance(pred, np.ndarray)
        p = torch.as_tensor(pred) if is_numpy else pred
        channels = p.shape[0] if p.ndim else 0
        dtype = torch.uint8 if max(self.native_values) < 256 else torch.int32
        if self.kind == "regions":
            if channels != self.out_channels:
                raise ValueError(
                    f"{self.name} predictions need {self.out_channels} channels "
                    f"{list(self.names)}, got shape {tuple(p.shape)}"
                )
            mask = p >= threshold
            out = torch.zeros_like(p[:1], dtype=dtype)
            for channel, value in self.paint:
                out[0][mask[channel]] = value
        else:
            if channels == self.out_channels:
                index = torch.argmax(p, dim=0, keepdim=True)
            elif channels == 1:
                index = torch.round(p).long().clamp(0, self.out_channels - 1)
            else:
                raise ValueError(
                    f"{self.name} predictions need {self.out_channels} class channels or one "
                    f"channel of class indices, got shape {tuple(p.shape)}"
                )
            lut = torch.tensor(self.class_values, dtype=dtype, device=p.device)
            out = lut[index.long()]
            if hasattr(p, "meta"):
                out = type(p)(out, meta=p.meta)
        return out.numpy() if is_numpy else out

    # ----------------------------------------------------------------- (de)serialisation
    def as_dict(self) -> dict[str, Any]:
        """Plain-Python form (JSON/YAML friendly); :meth:`from_dict` inverts it.

        Example:
            >>> c = get_convention("iseg")
            >>> LabelConvention.from_dict(c.as_dict()) == c
            True
        """
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LabelConvention:
        """Rebuild a convention from :meth:`as_dict` output (lists become tuples)."""

        def tup(x: Any) -> Any:
            return tuple(tup(v) for v in x) if isinstance(x, list | tuple) else x

        return cls(**{k: tup(v) for k, v in data.items()})


def _unique_values(label: Any) -> set[float]:
    """Distinct values of a label map; O(n) via bincount for small non-negative integers."""
    x = label.as_tensor() if hasattr(label, "as_tensor") else torch.as_tensor(np.asarray(label))
    x = x.detach().reshape(-1)
    if x.numel() == 0:
        return set()
    if x.is_floating_point():
        odd = x[~torch.isfinite(x) | (x != torch.round(x))]
        if odd.numel():
            return {float(v) for v in torch.unique(odd[:1000]).tolist()}
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > 65535 or x.dtype == torch.bool:
        return {int(v) for v in torch.unique(x.long()).tolist()}
    counts = torch.bincount(x.long(), minlength=int(hi) + 1)
    return {int(v) for v in torch.nonzero(counts).reshape(-1).tolist()}


def _isin(t: torch.Tensor, values: Sequence[int]) -> torch.Tensor:
    out = t == values[0]
    for v in values[1:]:
        out = out | (t == v)
    return out


def _brats(name: str, et: int) -> LabelConvention:
    return LabelConvention(
        name=name,
        kind="regions",
        names=("TC", "WT", "ET"),
        regions=((1, et), (1, 2, et), (et,)),
        paint=((1, 2), (0, 1), (2, et)),
        et_label=et,
    )


#: The built-in conventions by name.
CONVENTIONS: dict[str, LabelConvention] = {
    "brats": _brats("brats", 4),
    "brats2023": _brats("brats2023", 3),
    # MSD Task01_BrainTumour: 1 edema, 2 non-enhancing tumour, 3 enhancing tumour.
    "msd": LabelConvention(
        name="msd",
        kind="regions",
        names=("TC", "WT", "ET"),
        regions=((2, 3), (1, 2, 3), (3,)),
        paint=((1, 1), (0, 2), (2, 3)),
    ),
    "iseg": LabelConvention(
        name="iseg",
        kind="classes",
        names=("background", "CSF", "GM", "WM"),
        class_values=(0, 10, 150, 250),
    ),
}

_ALIASES = {"brats2020": "brats", "brats2021": "brats"}


def get_convention(name: str | LabelConvention | Mapping[str, Any]) -> LabelConvention:
    """The built-in convention ``name`` (a :class:`LabelConvention` is passed through).

    Args:
        name: ``"brats"`` (2020/2021, ET=4), ``"brats2023"`` (ET=3), ``"msd"`` or ``"iseg"``;
            the layout names ``"brats2020"``/``"brats2021"`` are accepted for ``"brats"``.
            A mapping from :meth:`LabelConvention.as_dict` rebuilds a custom convention (e.g.
            one read from an nnU-Net ``dataset.json``) stored in a checkpoint.

    Raises:
        ValueError: unknown name (with a did-you-mean hint).

    Example:
        >>> get_convention("iseg").out_channels
        4
    """
    if isinstance(name, LabelConvention):
        return name
    if isinstance(name, Mapping):
        return LabelConvention.from_dict(name)
    key = check_option("label convention", name, [*CONVENTIONS, *_ALIASES])
    return CONVENTIONS[_ALIASES.get(key, key)]
