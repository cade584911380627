"""nnU-Net v2 ``arch_kwargs`` read as the options of invseg's nets, or refused by name.

nnU-Net builds the network of a plans configuration as
``cls(input_channels=..., num_classes=..., **arch_kwargs, deep_supervision=...)`` after turning
the ``_kw_requires_import`` entries (``conv_op``, ``norm_op``, ``dropout_op``, ``nonlin``) into
classes with ``pydoc.locate``. :func:`net_options` maps those arguments onto the ``channels``,
``blocks``, ``strides``, ``norm``, ``act`` and ``dropout`` of
:class:`~invseg.nets.PartiallyInvResUNet` and :class:`~invseg.nets.FullyInvResUNet`, or
raises a ``ValueError`` that names the plans entry (``architecture.arch_kwargs.strides[1]``)
and the value. The rules:

* ``features_per_stage`` are the ``channels``; ``n_stages`` the number of levels (at least 2).
* ``conv_op`` must be ``Conv3d``: the nets are 3D.
* ``strides``: ``1`` on every axis at stage 0 (it runs at full resolution); at each later stage
  a stride the nets down-sample by (:func:`~invseg.engine.check_stride`): ``2``, or per axis
  1s and 2s with at least one 2, such as nnU-Net's ``[1, 2, 2]`` for thick slices or the
  ``[2, 2, 1]`` that ends a BraTS plan. They become the nets' ``strides`` (one per
  down-sampling: the plans' ``strides[1:]``).
* ``kernel_sizes``: ``3`` on every axis at every stage, the nets' only kernel (their residual
  blocks, stem and strided convolutions are 3x3x3); anything else, e.g. the ``[1, 3, 3]``
  nnU-Net pairs with thick slices, is refused rather than silently run as 3x3x3: write
  ``[3, 3, 3]`` in the plans to train with it.
* ``blocks``: one invertible residual block per **two** convolutions of an nnU-Net stage,
  ``ceil(n_conv_per_stage[i] / 2)`` (or ``n_blocks_per_stage[i]`` of residual-encoder plans,
  whose blocks hold two convolutions each): a block's ``F`` and ``G`` are two 3^3 convolutions
  in sequence, so the depth of convolutions, hence the receptive field, is nnU-Net's. A
  level's decoder stage has the blocks of its encoder stage (the nets have one count per
  level), so ``n_conv_per_stage_decoder`` is checked but not used. An explicit ``blocks``
  (invseg's own key) wins.
* ``norm_op``: ``InstanceNorm3d`` (nnU-Net's default), ``BatchNorm3d`` or ``GroupNorm`` with
  its ``norm_op_kwargs``; ``nonlin``: ``LeakyReLU`` (the default), ``ReLU`` and the other
  activations of MONAI's ``Act`` factory with ``nonlin_kwargs`` less ``inplace`` (the engine
  differentiates an activation from its output, which must not overwrite its input).
* ``dropout_op``: ``None`` or ``Dropout3d``/``Dropout`` with ``p``, used before each residual
  convolution (nnU-Net puts it after its convolutions).
* ``conv_bias`` is accepted and not used: invseg's convolutions keep their bias.

Example:
    >>> import torch
    >>> options = net_options(
    ...     n_stages=2, features_per_stage=[8, 16], conv_op=torch.nn.Conv3d,
    ...     kernel_sizes=[[3, 3, 3]] * 2, strides=[[1, 1, 1], [2, 2, 2]],
    ...     n_conv_per_stage=[2, 2], n_conv_per_stage_decoder=[2],
    ...     norm_op=torch.nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
    ...     nonlin=torch.nn.LeakyReLU, nonlin_kwargs={"inplace": True},
    ... )
    >>> options["channels"], options["blocks"], options["strides"], options["act"]
    ((8, 16), (1, 1), ((2, 2, 2),), ('leakyrelu', {}))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from monai.networks.layers.factories import Act

from invseg.engine import check_stride

__all__ = ["KEY", "check_strides", "net_options", "op_name"]

#: Where nnU-Net's network arguments live in a plans configuration (used in messages).
KEY = "architecture.arch_kwargs"
NORMS = {"InstanceNorm3d": "instance", "BatchNorm3d": "batch", "GroupNorm": "group"}
DROPOUTS = ("Dropout3d", "Dropout")
#: torch activation classes whose MONAI ``Act`` name is not their lower-cased name
ACT_ALIASES = {"SiLU": "swish"}


def op_name(op: object) -> str | None:
    """The class name of an nnU-Net op given as a class or a dotted path (``None`` stays).

    Example:
        >>> op_name("torch.nn.modules.conv.Conv3d"), op_name(None)
        ('Conv3d', None)
    """
    if op is None:
        return None
    if isinstance(op, str):
        return op.rsplit(".", 1)[-1]
    return getattr(op, "__name__", type(op).__name__)


def _ints(value: Any, entry: str) -> tuple[int, ...]:
    items = value if isinstance(value, (list, tuple)) else [value]
    positive = all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in items)
    if not items or not positive:
        raise ValueError(f"{KEY}.{entry} = {value!r}: expected positive ints.")
    return tuple(items)


def _per_stage(value: Any, n: int, entry: str) -> list[Any]:
    """``value`` as ``n`` entries: an int (or one per-axis list) repeats, a list must have ``n``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return [value] * n
    if not isinstance(value, (list, tuple)) or len(value) != n:
        raise ValueError(f"{KEY}.{entry} = {value!r}: expected {n} entries, one per stage.")
    return list(value)


def check_stages(n_stages: Any) -> int:
    """``n_stages`` as the number of levels (at least 2: a decoder stage to supervise)."""
    if isinstance(n_stages, bool) or not isinstance(n_stages, int) or n_stages < 2:
        raise ValueError(f"{KEY}.n_stages = {n_stages!r}: invseg's nets need an int >= 2.")
    return n_stages


def check_conv_op(conv_op: Any) -> None:
    """Refuse a ``conv_op`` other than ``Conv3d``."""
    if op_name(conv_op) != "Conv3d":
        raise ValueError(
            f"{KEY}.conv_op = {op_name(conv_op)!r}: invseg's nets are 3D only; use a 3D "
            "configuration (3d_fullres, 3d_lowres), whose conv_op is torch.nn.Conv3d."
        )


def _axes(entry_value: Any, entry: str) -> tuple[int, ...]:
    sizes = _ints(entry_value, entry)
    if len(sizes) not in (1, 3):
        raise ValueError(f"{KEY}.{entry} = {entry_value!r}: expected an int or 3 ints (D, H, W).")
    return sizes * 3 if len(sizes) == 1 else sizes


def check_strides(strides: Any, n_stages: int) -> tuple[tuple[int, int, int], ...]:
    """The nets' ``strides`` (stages ``1 .. n_stages - 1``) from the plans', or a ``ValueError``.

    Stage 0 must be 1 on every axis; each later stage a stride the nets accept.

    Example:
        >>> check_strides([[1, 1, 1], [1, 2, 2], 2], 3)
        ((1, 2, 2), (2, 2, 2))
    """
    per_stage = _per_stage(strides, n_stages, "strides")
    if _axes(per_stage[0], "strides[0]") != (1, 1, 1):
        raise ValueError(
            f"{KEY}.strides[0] = {per_stage[0]!r}: invseg's nets need [1, 1, 1] (stage 0 runs "
            "at full resolution; each later stage down-samples)."
        )
    checked = []
    for i, stride in enumerate(per_stage[1:], start=1):
        try:
            checked.append(check_stride(_axes(stride, f"strides[{i}]")))
        except (TypeError, ValueError):
            raise ValueError(
                f"{KEY}.strides[{i}] = {stride!r}: invseg's nets down-sample each later stage "
                "by 1 or 2 per axis with at least one 2 (e.g. [2, 2, 2], [1, 2, 2], [2, 2, 1])."
            ) from None
    return tuple(checked)


def check_kernels(kernel_sizes: Any, n_stages: int) -> None:
    """Kernel 3 on every axis at every stage, else a ``ValueError``."""
    for i, kernel in enumerate(_per_stage(kernel_sizes, n_stages, "kernel_sizes")):
        if _axes(kernel, f"kernel_sizes[{i}]") != (3, 3, 3):
            raise ValueError(
                f"{KEY}.kernel_sizes[{i}] = {kernel!r}: invseg's nets use 3x3x3 kernels only; "
                "write [3, 3, 3] in the plans to train them (nnU-Net plans smaller kernels for "
                "thick slices)."
            )


def level_blocks(
    n_stages: int,
    n_conv_per_stage: Any,
    n_blocks_per_stage: Any,
    n_conv_per_stage_decoder: Any,
    blocks: Any,
) -> tuple[int, ...]:
    """Invertible blocks per level: ``blocks``, else one per two convolutions (module doc)."""
    if n_conv_per_stage_decoder is not None:
        entry = "n_conv_per_stage_decoder"
        _ints(_per_stage(n_conv_per_stage_decoder, n_stages - 1, entry), entry)
    if blocks is not None:
        return _ints(_per_stage(blocks, n_stages, "blocks"), "blocks")
    if n_blocks_per_stage is not None:
        entry = "n_blocks_per_stage"
        return _ints(_per_stage(n_blocks_per_stage, n_stages, entry), entry)
    if n_conv_per_stage is None:
        raise ValueError(f"{KEY}: give n_conv_per_stage (or n_blocks_per_stage, or blocks).")
    convs = _ints(_per_stage(n_conv_per_stage, n_stages, "n_conv_per_stage"), "n_conv_per_stage")
    return tuple(math.ceil(c / 2) for c in convs)


def norm_option(norm_op: Any, norm_op_kwargs: dict | None) -> tuple[str, dict]:
    """invseg's ``norm`` for nnU-Net's ``norm_op`` and ``norm_op_kwargs``."""
    name = op_name(norm_op)
    if name not in NORMS:
        raise ValueError(
            f"{KEY}.norm_op = {name!r}: invseg's residual units are norm -> act -> conv and "
            f"support {sorted(NORMS)}."
        )
    return NORMS[name], dict(norm_op_kwargs or {})


def act_option(nonlin: Any, nonlin_kwargs: dict | None) -> tuple[str, dict]:
    """invseg's ``act`` for nnU-Net's ``nonlin`` and ``nonlin_kwargs`` (``inplace`` dropped)."""
    name = op_name(nonlin)
    act = ACT_ALIASES.get(name or "", (name or "").lower())
    if nonlin is None or act.upper() not in Act.names:
        supported = sorted(n.lower() for n in Act.names)
        raise ValueError(
            f"{KEY}.nonlin = {name!r}: not an activation invseg's nets can build "
            f"(torch.nn classes named as MONAI's Act factory: {supported})."
        )
    kwargs = {k: v for k, v in (nonlin_kwargs or {}).items() if k != "inplace"}
    return act, kwargs


def dropout_option(dropout_op: Any, dropout_op_kwargs: dict | None) -> float:
    """invseg's ``dropout`` probability for nnU-Net's ``dropout_op`` (``None``: 0)."""
    name = op_name(dropout_op)
    if name is None:
        return 0.0
    if name not in DROPOUTS:
        raise ValueError(f"{KEY}.dropout_op = {name!r}: use None or torch.nn.Dropout3d.")
    p = (dropout_op_kwargs or {}).get("p", 0.5)
    if not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
        raise ValueError(f"{KEY}.dropout_op_kwargs.p = {p!r}: expected a probability in [0, 1).")
    return float(p)


def net_options(
    *,
    n_stages: int,
    features_per_stage: int | Sequence[int],
    conv_op: Any,
    kernel_sizes: Any,
    strides: Any,
    n_conv_per_stage: Any = None,
    n_conv_per_stage_decoder: Any = None,
    n_blocks_per_stage: Any = None,
    conv_bias: bool = True,
    norm_op: Any = None,
    norm_op_kwargs: dict | None = None,
    dropout_op: Any = None,
    dropout_op_kwargs: dict | None = None,
    nonlin: Any = None,
    nonlin_kwargs: dict | None = None,
    blocks: Any = None,
) -> dict[str, Any]:
    """The invseg net options (``channels, blocks, strides, norm, act, dropout``) for nnU-Net's
    arguments.

    Ops may be classes (as nnU-Net passes them) or dotted paths (as the plans file holds them).
    ``conv_bias`` is accepted and not used (the nets' convolutions keep their bias).

    Raises:
        ValueError: an argument the nets cannot honour, naming its plans entry and value.
    """
    del conv_bias
    n = check_stages(n_stages)
    channels = _ints(_per_stage(features_per_stage, n, "features_per_stage"), "features_per_stage")
    check_conv_op(conv_op)
    down = check_strides(strides, n)
    check_kernels(kernel_sizes, n)
    return {
        "channels": channels,
        "blocks": level_blocks(
            n, n_conv_per_stage, n_blocks_per_stage, n_conv_per_stage_decoder, blocks
        ),
        "strides": down,
        "norm": norm_option(norm_op, norm_op_kwargs),
        "act": act_option(nonlin, nonlin_kwargs),
        "dropout": dropout_option(dropout_op, dropout_op_kwargs),
    }
