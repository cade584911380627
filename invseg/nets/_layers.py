"""Argument checks and MONAI-factory layer builders shared by the networks (internal)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch.nn.functional as F
from monai.networks.layers.factories import Act, Conv, Dropout, Norm
from monai.networks.layers.utils import get_act_layer, get_norm_layer
from torch import Tensor, nn

from invseg._choices import check_option
from invseg.engine import check_stride

DEFAULT_ACT: tuple = ("leakyrelu", {"negative_slope": 0.01, "inplace": False})
DEFAULT_NORM: tuple = ("group", {"num_groups": 8})


def split_args(arg: str | tuple, what: str) -> tuple[str, dict]:
    """Split a MONAI-style ``name`` or ``(name, kwargs)`` option into its two parts."""
    if isinstance(arg, str):
        return arg, {}
    if isinstance(arg, (tuple, list)) and len(arg) == 2 and isinstance(arg[0], str):
        if not isinstance(arg[1], dict):
            raise TypeError(f"{what} kwargs must be a dict, got {type(arg[1]).__name__}.")
        return arg[0], dict(arg[1])
    raise TypeError(f"{what} must be a name or a (name, kwargs) pair, got {arg!r}.")


def check_act(act: str | tuple) -> str | tuple:
    """Validate an activation option against MONAI's ``Act`` factory (did-you-mean on typos)."""
    name, _ = split_args(act, "act")
    check_option("act", name.upper(), Act.names)
    return act


def check_norm(norm: str | tuple) -> str | tuple:
    """Validate a normalisation option against MONAI's ``Norm`` factory."""
    name, _ = split_args(norm, "norm")
    check_option("norm", name.upper(), Norm.names)
    return norm


def make_norm(norm: str | tuple, spatial_dims: int, channels: int) -> nn.Module:
    """A MONAI normalisation layer for ``channels``.

    For group norm, ``num_groups`` is reduced to ``gcd(num_groups, channels)`` when it does not
    divide ``channels`` (the half-width residual functions of small networks have few channels).

    Example:
        >>> make_norm(("group", {"num_groups": 8}), 3, 4).num_groups
        4
    """
    name, kwargs = split_args(norm, "norm")
    if name.lower() == "group":
        groups = int(kwargs.get("num_groups", 8))
        kwargs["num_groups"] = math.gcd(groups, channels) if channels % groups else groups
        return get_norm_layer((name, kwargs), spatial_dims=spatial_dims, channels=channels)
    return get_norm_layer(norm, spatial_dims=spatial_dims, channels=channels)


def conv(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    kernel_size: int = 3,
    *,
    stride: int | Sequence[int] = 1,
    transposed: bool = False,
) -> nn.Module:
    """A MONAI-factory convolution with 'same' padding (transposed: kernel = stride)."""
    if transposed:
        return Conv[Conv.CONVTRANS, spatial_dims](
            in_channels, out_channels, kernel_size=stride, stride=stride
        )
    return Conv[Conv.CONV, spatial_dims](
        in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2
    )


def norm_act_conv(
    channels: int,
    out_channels: int | None = None,
    *,
    spatial_dims: int = 3,
    act: str | tuple = DEFAULT_ACT,
    norm: str | tuple = DEFAULT_NORM,
    dropout: float = 0.0,
    kernel_size: int = 3,
) -> nn.Sequential:
    """Pre-activation unit ``norm -> act -> (dropout) -> conv`` built with MONAI factories.

    Example:
        >>> import torch
        >>> unit = norm_act_conv(4)
        >>> unit(torch.randn(1, 4, 6, 6, 6)).shape
        torch.Size([1, 4, 6, 6, 6])
    """
    layers: list[nn.Module] = [make_norm(norm, spatial_dims, channels), get_act_layer(act)]
    if dropout:
        layers.append(Dropout[Dropout.DROPOUT, spatial_dims](dropout))
    layers.append(conv(spatial_dims, channels, out_channels or channels, kernel_size))
    return nn.Sequential(*layers)


def per_level(blocks: int | Sequence[int], levels: int) -> tuple[int, ...]:
    """Expand ``blocks`` (an int or one int per level) to a tuple of ``levels`` ints."""
    if isinstance(blocks, bool):
        raise TypeError("blocks must be an int or a sequence of ints, not a bool.")
    if isinstance(blocks, int):
        blocks = (blocks,) * levels
    blocks = tuple(blocks)
    if len(blocks) != levels or not all(isinstance(b, int) and b >= 1 for b in blocks):
        raise ValueError(
            f"blocks must be a positive int or {levels} positive ints (one per level of "
            f"channels), got {blocks!r}."
        )
    return blocks


def check_common(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    channels: Sequence[int],
    dropout: float,
) -> tuple[int, ...]:
    """Validate the arguments every network shares; return ``channels`` as a tuple."""
    if spatial_dims != 3:
        raise ValueError(f"only spatial_dims=3 is supported, got {spatial_dims}.")
    for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}.")
    channels = tuple(channels)
    if not channels or not all(isinstance(c, int) and c >= 2 for c in channels):
        raise ValueError(f"channels must be a non-empty sequence of ints >= 2, got {channels!r}.")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}.")
    return channels


def per_level_strides(
    strides: Sequence[int | Sequence[int]] | None, levels: int
) -> tuple[tuple[int, int, int], ...]:
    """One ``(D, H, W)`` stride per down-sampling (``levels - 1``); ``None``: 2 on every axis.

    Each entry is ``2`` or a per-axis sequence of 1s and 2s with at least one 2
    (:func:`~invseg.engine.check_stride`), e.g. nnU-Net's ``[1, 2, 2]`` for thick slices.

    Example:
        >>> per_level_strides(None, 3), per_level_strides([[1, 2, 2], 2], 3)
        (((2, 2, 2), (2, 2, 2)), ((1, 2, 2), (2, 2, 2)))
    """
    if strides is None:
        return ((2, 2, 2),) * (levels - 1)
    if isinstance(strides, (int, str)) or len(strides) != levels - 1:
        raise ValueError(
            f"strides needs one entry per down-sampling, len(channels) - 1 = {levels - 1}, got "
            f"{strides!r}."
        )
    return tuple(check_stride(s, name=f"strides[{i}]") for i, s in enumerate(strides))


def check_vae_size(
    input_image_size: Sequence[int] | None, vae: bool, spatial_dims: int
) -> tuple[int, ...] | None:
    """Validate ``input_image_size`` (required when ``vae=True``)."""
    if not vae:
        return None if input_image_size is None else tuple(int(s) for s in input_image_size)
    if input_image_size is None:
        raise ValueError(
            "vae=True needs input_image_size=(D, H, W), the fixed training crop: the VAE's dense "
            "layers depend on it."
        )
    size = tuple(int(s) for s in input_image_size)
    if len(size) != spatial_dims or min(size) < 1:
        raise ValueError(f"input_image_size must be {spatial_dims} positive ints, got {size!r}.")
    return size


def pad_to_multiple(x: Tensor, multiple: int | Sequence[int]) -> tuple[Tensor, tuple[int, ...]]:
    """Zero-pad the spatial dims of ``x`` at the end to a multiple of ``multiple`` (one int, or
    one per spatial axis).

    Returns the padded tensor and the original spatial size (for :func:`crop_to`).
    """
    size = tuple(x.shape[2:])
    multiples = [multiple] * len(size) if isinstance(multiple, int) else list(multiple)
    extra = [(-s) % m for s, m in zip(size, multiples)]
    if not any(extra):
        return x, size
    pad: list[int] = []
    for e in reversed(extra):
        pad += [0, e]
    return F.pad(x, pad), size


def crop_to(x: Tensor, size: Sequence[int]) -> Tensor:
    """Crop the spatial dims of ``x`` to ``size`` (from the start)."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    return x[(slice(None), slice(None), *(slice(0, s) for s in size))]
