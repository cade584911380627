"""The model zoo of the quality and plan benchmarks: our nets and the MONAI peers a user would pick.

Every entry is one ``model`` section (:func:`model_section`): a network of the registry
(:func:`invseg.nets.list_models`) and plain arguments, exactly what a config gives
``invseg train``. :func:`build` instantiates that section the way ``invseg train`` does and
wraps the net in :class:`ZooNet`, whose ``forward`` returns ``(logits, vae_loss)``
(``vae_loss`` is ``None`` without a VAE branch or in eval mode): a net with a VAE branch returns
that pair itself while it trains (ours and MONAI's ``SegResNetVAE``), the others their logits.
The peers are MONAI's own classes, configured here, not copied:

========================  =================================================================
name                      network (``base`` = width of the first level)
========================  =================================================================
unet3d                    :class:`~invseg.nets.UNet3D` (store), channels ``base * (1,2,4,8)``
unet3d_ckpt               the same net with ``memory="checkpoint"``: each level under
                          ``torch.utils.checkpoint`` while it trains
partially / _vae          :class:`~invseg.nets.PartiallyInvResUNet` invert (± VAE branch)
fully / _vae              :class:`~invseg.nets.FullyInvResUNet` invert (± VAE branch)
partially_deep            4 invertible blocks per level instead of 1: the twin's parameter
fully_deep                count (Partially; Fully 0.8x) at the activation memory of one
                          block per level (opt-in rows, ``--models``)
fully_lift                ``fully`` with ``lift=True``: a fixed channel lift for the stem and
                          logits read off the body (the least activation memory; opt-in)
segresnet / segresnetvae  MONAI ``SegResNet`` / ``SegResNetVAE``, ``init_filters = base // 2``
                          (parameter count close to the U-Nets'); the VAE loss weighted 0.1
dynunet                   MONAI ``DynUNet`` configured like nnU-Net for the crop: kernels 3,
                          strides ``1, 2, ...`` while the feature map stays >= 4 voxels (at
                          most 5 pools), filters ``base * 2**i`` capped at ``10 * base``
monai_unet                MONAI ``UNet``, channels ``base * (1,2,4,8)``, strides 2,
                          ``num_res_units=2``
monai_checkpoint_unet     MONAI ``CheckpointUNet`` (``monai.networks.nets.unet``), same arguments
========================  =================================================================
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from invseg._choices import check_option

__all__ = ["DEFAULT_MODELS", "ZOO", "Entry", "ZooNet", "build", "dynunet_layout", "model_section"]


class ZooNet(nn.Module):
    """Uniform wrapper: ``forward(x) -> (logits, vae_loss or None)``.

    Args:
        net: the wrapped network.
        name: zoo name.
        memory: ``"store"``, ``"checkpoint"`` or ``"invert"`` (how activations are kept).
        multiple: the input's spatial sizes must be a multiple of this (1: any size).
        vae_scale: factor applied to the VAE loss the net returns (0.1 for MONAI's
            ``SegResNetVAE``, whose loss is unweighted; ours weight theirs themselves).
    """

    def __init__(
        self, net: nn.Module, *, name: str, memory: str, multiple: int, vae_scale: float = 1.0
    ) -> None:
        super().__init__()
        self.net, self.name, self.memory = net, name, memory
        self.multiple, self.vae_scale = multiple, vae_scale

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        out = self.net(x)
        logits, vae = out if isinstance(out, tuple) else (out, None)
        return logits, None if vae is None else vae * self.vae_scale

    def logits(self, x: Tensor) -> Tensor:
        """Only the logits (for sliding-window inference)."""
        return self(x)[0]


ModelSection = dict[str, Any]


@dataclass(frozen=True)
class Entry:
    """One zoo row: ``section(io, crop, base)`` gives its ``model`` section, the other fields
    say how the row keeps activations and which input sizes it takes."""

    section: Callable[[dict[str, int], list[int], int], ModelSection]
    memory: str
    multiple: Callable[[tuple[int, int, int]], int]
    vae_scale: float = 1.0


def _widths(base: int) -> list[int]:
    return [base, 2 * base, 4 * base, 8 * base]


def _unet3d(memory: str) -> Callable[..., ModelSection]:
    def section(io: dict[str, int], crop: list[int], base: int) -> ModelSection:
        return {"_target_": "UNet3D", **io, "channels": _widths(base), "memory": memory}

    return section


def _inv(target: str, *, vae: bool = False, **extra: Any) -> Callable[..., ModelSection]:
    def section(io: dict[str, int], crop: list[int], base: int) -> ModelSection:
        from invseg.nets.vae import vae_kwargs  # the one rule: the crop sizes the VAE

        out = {"_target_": target, **io, "channels": _widths(base), "memory": "invert"}
        return vae_kwargs(out | ({"vae": True} if vae else {}) | extra, crop)

    return section


def _segresnet(vae: bool) -> Callable[..., ModelSection]:
    def section(io: dict[str, int], crop: list[int], base: int) -> ModelSection:
        out = {"_target_": "SegResNetVAE" if vae else "SegResNet", **io}
        out["init_filters"] = max(base // 2, 8)
        return out | ({"input_image_size": crop} if vae else {})

    return section


def dynunet_layout(crop: Sequence[int], base: int) -> dict[str, list]:
    """nnU-Net-like ``DynUNet`` arguments for a crop: one pool while the map stays >= 4 voxels.

    Example:
        >>> dynunet_layout((32, 32, 32), 16)["filters"]
        [16, 32, 64, 128]
        >>> len(dynunet_layout((128, 128, 128), 32)["strides"]), dynunet_layout((128,) * 3, 32)[
        ...     "filters"][-1]
        (6, 320)
    """
    pools = max(1, min(5, math.floor(math.log2(min(crop) / 4))))
    strides = [1] + [2] * pools
    return {
        "kernel_size": [3] * (pools + 1),
        "strides": strides,
        "upsample_kernel_size": strides[1:],
        "filters": [min(base * 2**k, 10 * base) for k in range(pools + 1)],
    }


def _dynunet(io: dict[str, int], crop: list[int], base: int) -> ModelSection:
    return {"_target_": "DynUNet", **io, **dynunet_layout(crop, base), "res_block": False}


def _monai_unet(target: str) -> Callable[..., ModelSection]:
    def section(io: dict[str, int], crop: list[int], base: int) -> ModelSection:
        return {
            "_target_": target, **io, "channels": _widths(base), "strides": [2, 2, 2],
            "num_res_units": 2,
        }  # fmt: skip

    return section


def _const(m: int) -> Callable[[tuple[int, int, int]], int]:
    return lambda crop: m


ZOO: dict[str, Entry] = {
    "unet3d": Entry(_unet3d("store"), "store", _const(1)),
    "unet3d_ckpt": Entry(_unet3d("checkpoint"), "checkpoint", _const(1)),
    "partially": Entry(_inv("PartiallyInvResUNet"), "invert", _const(1)),
    "partially_vae": Entry(_inv("PartiallyInvResUNet", vae=True), "invert", _const(1)),
    "fully": Entry(_inv("FullyInvResUNet"), "invert", _const(1)),
    "fully_vae": Entry(_inv("FullyInvResUNet", vae=True), "invert", _const(1)),
    "partially_deep": Entry(_inv("PartiallyInvResUNet", blocks=4), "invert", _const(1)),
    "fully_deep": Entry(_inv("FullyInvResUNet", blocks=4), "invert", _const(1)),
    "fully_lift": Entry(_inv("FullyInvResUNet", lift=True), "invert", _const(1)),
    "segresnet": Entry(_segresnet(False), "store", _const(8)),
    "segresnetvae": Entry(_segresnet(True), "store", _const(16), vae_scale=0.1),
    "dynunet": Entry(
        _dynunet, "store", lambda crop: 2 ** (len(dynunet_layout(crop, 1)["strides"]) - 1)
    ),
    "monai_unet": Entry(_monai_unet("UNet"), "store", _const(8)),
    "monai_checkpoint_unet": Entry(_monai_unet("CheckpointUNet"), "checkpoint", _const(8)),
}

#: Rows a quality or plan run leaves out unless named with ``--models``.
OPT_IN = ("partially_deep", "fully_deep", "fully_lift")
#: The rows of a default quality or plan run.
DEFAULT_MODELS = tuple(name for name in ZOO if name not in OPT_IN)


def model_section(
    name: str,
    *,
    in_channels: int,
    out_channels: int,
    crop: Sequence[int],
    base: int = 16,
    memory: str | None = None,
) -> ModelSection:
    """The ``model`` section of zoo entry ``name``: a registered network and plain arguments.

    What :func:`build` instantiates and what a ``bench quality`` row's ``config.yaml`` holds:
    ``invseg train`` builds the same network from it (:func:`invseg.nets.create`).

    Args:
        name: a key of :data:`ZOO`.
        in_channels: image channels.
        out_channels: logit channels.
        crop: training crop ``(D, H, W)``: fixes the VAE input size and the DynUNet depth.
        base: channels of the first level.
        memory: for our nets, override the memory mode (``store``, ``checkpoint``, ``invert``;
            UNet3D reads ``invert`` as ``store``); must be ``None`` for the others.

    Raises:
        ValueError: unknown name (did-you-mean), bad crop or base, a memory mode for a peer.

    Example:
        >>> model_section("unet3d", in_channels=4, out_channels=3, crop=(32, 32, 32), base=8)
        {'_target_': 'UNet3D', 'spatial_dims': 3, 'in_channels': 4, 'out_channels': 3, \
'channels': [8, 16, 32, 64], 'memory': 'store'}
    """
    entry = ZOO[check_option("zoo model", name, tuple(ZOO))]
    crop3 = [int(c) for c in crop]
    if len(crop3) != 3 or min(crop3) < 8:
        raise ValueError(f"crop must be 3 sizes of at least 8 voxels, got {tuple(crop)}")
    if int(base) < 2 or int(base) % 2:
        raise ValueError(f"base must be an even number of channels >= 2, got {base}")
    io = {"spatial_dims": 3, "in_channels": int(in_channels), "out_channels": int(out_channels)}
    section = entry.section(io, crop3, int(base))
    if memory is not None:
        if "memory" not in section:
            raise ValueError(f"zoo model {name!r} has no memory modes; pass memory=None")
        section["memory"] = memory
    return section


def build(
    name: str,
    *,
    in_channels: int,
    out_channels: int,
    crop: Sequence[int],
    base: int = 16,
    memory: str | None = None,
) -> ZooNet:
    """Build zoo model ``name`` for a training crop: its :func:`model_section`, instantiated
    through the registry like a config's ``model`` section
    (:func:`invseg.runtime.config.instantiate_model`).

    Args: as :func:`model_section`.

    Returns:
        A :class:`ZooNet` whose ``forward`` returns ``(logits, vae_loss or None)``.

    Raises:
        ValueError: unknown name (did-you-mean), bad crop or base, a memory mode for a peer or
            one the net does not know.

    Example:
        >>> import torch
        >>> net = build("monai_unet", in_channels=4, out_channels=3, crop=(16, 16, 16), base=8)
        >>> logits, vae = net(torch.randn(1, 4, 16, 16, 16))
        >>> tuple(logits.shape), vae is None, net.memory
        ((1, 3, 16, 16, 16), True, 'store')
    """
    from invseg.runtime.config import instantiate_model

    key = check_option("zoo model", name, tuple(ZOO))
    section = model_section(
        key, in_channels=in_channels, out_channels=out_channels, crop=crop, base=base,
        memory=memory,
    )  # fmt: skip
    net, entry = instantiate_model(section), ZOO[key]
    mode = entry.memory if memory is None else net.memory
    crop3 = (int(crop[0]), int(crop[1]), int(crop[2]))
    return ZooNet(
        net, name=key, memory=mode, multiple=entry.multiple(crop3), vae_scale=entry.vae_scale
    )
