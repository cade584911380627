"""The model zoo of the quality and plan benchmarks: our nets and the MONAI peers a user would pick.

Every entry is built by :func:`build` with one signature and wrapped in :class:`ZooNet`, whose
``forward`` returns ``(logits, vae_loss)`` (``vae_loss`` is ``None`` without a VAE branch or in
eval mode), so one training loop serves every row: a net with a VAE branch returns that pair
itself while it trains (ours and MONAI's ``SegResNetVAE``), the others their logits. The peers
are MONAI's own classes, configured here, not copied:

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
monai_checkpoint_unet     ``monai.networks.nets.unet.CheckpointUNet``, same arguments
========================  =================================================================
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from invseg._choices import check_option

__all__ = ["DEFAULT_MODELS", "ZOO", "ZooNet", "build", "dynunet_layout"]


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


@dataclass(frozen=True)
class Spec:
    """How to build one zoo entry: ``make(in_channels, out_channels, crop, base) -> net``."""

    make: Callable[[int, int, tuple[int, int, int], int], nn.Module]
    memory: str
    multiple: Callable[[tuple[int, int, int]], int]
    vae_scale: float = 1.0


def _widths(base: int) -> tuple[int, ...]:
    return (base, 2 * base, 4 * base, 8 * base)


def _unet3d(memory: str) -> Callable[..., nn.Module]:
    def make(i: int, o: int, crop: tuple[int, int, int], base: int) -> nn.Module:
        from invseg.nets import UNet3D

        return UNet3D(3, i, o, channels=_widths(base), memory=memory)

    return make


def _inv(kind: str, vae: bool, blocks: int = 1, **extra: object) -> Callable[..., nn.Module]:
    def make(i: int, o: int, crop: tuple[int, int, int], base: int) -> nn.Module:
        from invseg.nets import FullyInvResUNet, PartiallyInvResUNet
        from invseg.nets.vae import vae_kwargs

        cls = PartiallyInvResUNet if kind == "partially" else FullyInvResUNet
        kw = {"channels": _widths(base), "blocks": blocks, "memory": "invert", "vae": vae}
        return cls(3, i, o, **vae_kwargs(kw | extra, crop))

    return make


def _segresnet(vae: bool) -> Callable[..., nn.Module]:
    def make(i: int, o: int, crop: tuple[int, int, int], base: int) -> nn.Module:
        from monai.networks.nets import SegResNet, SegResNetVAE

        kw = {"spatial_dims": 3, "in_channels": i, "out_channels": o}
        kw["init_filters"] = max(base // 2, 8)
        return SegResNetVAE(input_image_size=crop, **kw) if vae else SegResNet(**kw)

    return make


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


def _dynunet(i: int, o: int, crop: tuple[int, int, int], base: int) -> nn.Module:
    from monai.networks.nets import DynUNet

    return DynUNet(3, i, o, **dynunet_layout(crop, base), res_block=False)


def _monai_unet(ckpt: bool) -> Callable[..., nn.Module]:
    def make(i: int, o: int, crop: tuple[int, int, int], base: int) -> nn.Module:
        from monai.networks.nets.unet import CheckpointUNet, UNet

        cls = CheckpointUNet if ckpt else UNet
        return cls(3, i, o, channels=_widths(base), strides=(2, 2, 2), num_res_units=2)

    return make


def _const(m: int) -> Callable[[tuple[int, int, int]], int]:
    return lambda crop: m


ZOO: dict[str, Spec] = {
    "unet3d": Spec(_unet3d("store"), "store", _const(1)),
    "unet3d_ckpt": Spec(_unet3d("checkpoint"), "checkpoint", _const(1)),
    "partially": Spec(_inv("partially", False), "invert", _const(1)),
    "partially_vae": Spec(_inv("partially", True), "invert", _const(1)),
    "fully": Spec(_inv("fully", False), "invert", _const(1)),
    "fully_vae": Spec(_inv("fully", True), "invert", _const(1)),
    "partially_deep": Spec(_inv("partially", False, blocks=4), "invert", _const(1)),
    "fully_deep": Spec(_inv("fully", False, blocks=4), "invert", _const(1)),
    "fully_lift": Spec(_inv("fully", False, lift=True), "invert", _const(1)),
    "segresnet": Spec(_segresnet(False), "store", _const(8)),
    "segresnetvae": Spec(_segresnet(True), "store", _const(16), vae_scale=0.1),
    "dynunet": Spec(
        _dynunet, "store", lambda crop: 2 ** (len(dynunet_layout(crop, 1)["strides"]) - 1)
    ),
    "monai_unet": Spec(_monai_unet(False), "store", _const(8)),
    "monai_checkpoint_unet": Spec(_monai_unet(True), "checkpoint", _const(8)),
}

#: Rows a quality or plan run leaves out unless named with ``--models``.
OPT_IN = ("partially_deep", "fully_deep", "fully_lift")
#: The rows of a default quality or plan run.
DEFAULT_MODELS = tuple(name for name in ZOO if name not in OPT_IN)


def build(
    name: str,
    *,
    in_channels: int,
    out_channels: int,
    crop: Sequence[int],
    base: int = 16,
    memory: str | None = None,
) -> ZooNet:
    """Build zoo model ``name`` for a training crop.

    Args:
        name: a key of :data:`ZOO`.
        in_channels: image channels.
        out_channels: logit channels.
        crop: training crop ``(D, H, W)``: fixes the VAE input size and the DynUNet depth.
        base: channels of the first level.
        memory: for our nets, override the memory mode (``store``, ``checkpoint``, ``invert``;
            UNet3D reads ``invert`` as ``store``); must be ``None`` for the others.

    Returns:
        A :class:`ZooNet` whose ``forward`` returns ``(logits, vae_loss or None)``.

    Raises:
        ValueError: unknown name (did-you-mean), bad crop or base, a memory mode for a peer.

    Example:
        >>> import torch
        >>> net = build("monai_unet", in_channels=4, out_channels=3, crop=(16, 16, 16), base=8)
        >>> logits, vae = net(torch.randn(1, 4, 16, 16, 16))
        >>> tuple(logits.shape), vae is None, net.memory
        ((1, 3, 16, 16, 16), True, 'store')
    """
    spec = ZOO[check_option("zoo model", name, tuple(ZOO))]
    crop3 = tuple(int(c) for c in crop)
    if len(crop3) != 3 or min(crop3) < 8:
        raise ValueError(f"crop must be 3 sizes of at least 8 voxels, got {tuple(crop)}")
    if int(base) < 2 or int(base) % 2:
        raise ValueError(f"base must be an even number of channels >= 2, got {base}")
    net = spec.make(int(in_channels), int(out_channels), crop3, int(base))
    mode = spec.memory
    if memory is not None:
        if not hasattr(net, "memory"):
            raise ValueError(f"zoo model {name!r} has no memory modes; pass memory=None")
        net.memory = memory
        mode = net.memory
    return ZooNet(
        net, name=name, memory=mode, multiple=spec.multiple(crop3), vae_scale=spec.vae_scale
    )
