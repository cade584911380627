"""UNet3D: the non-invertible residual 3D U-Net baseline."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from invseg.nets._layers import DEFAULT_ACT, DEFAULT_NORM
from invseg.nets._unet import ResUNetBase
from invseg.nets.res_block import ResidualBlock


class UNet3D(ResUNetBase):
    r"""Residual 3D U-Net, the non-invertible baseline of the InvRes U-Nets.

    Same macro-architecture as :class:`~invseg.nets.PartiallyInvResUNet`: a 3^3 stem conv to
    ``channels[0]``; at level :math:`i` (resolution :math:`2^{-i}`, ``channels[i]`` channels)
    ``blocks[i]`` pre-activation residual blocks :math:`y = x + G(F(x))` with
    :math:`F, G = \mathrm{conv} \circ \mathrm{act} \circ \mathrm{norm}` on all channels; strided
    3^3 conv down, transposed 2^3 conv up, additive skips, 1x1 conv head. Everything is stored for
    backward (plain autograd).

    Args:
        spatial_dims: number of spatial dimensions (3).
        in_channels: input channels (e.g. 4 MR modalities).
        out_channels: output channels (logits).
        channels: channels per level; ``len(channels)`` levels.
        blocks: residual blocks per level (an int or one per level).
        act: activation name or ``(name, kwargs)`` (MONAI ``Act`` factory).
        norm: normalisation name or ``(name, kwargs)`` (MONAI ``Norm`` factory).
        dropout: dropout probability before each conv.
        vae: add a :class:`~invseg.nets.VAEBranch` from the bottleneck (training only).
        input_image_size: fixed training crop ``(D, H, W)``, required when ``vae=True``.
        vae_weights: ``(w_rec, w_kl)`` of the VAE loss.

    Attributes:
        vae_loss: the weighted VAE loss of the last training forward, else ``None``.

    Shape:
        ``(B, in_channels, D, H, W) -> (B, out_channels, D, H, W)`` for any ``D, H, W`` (padded
        to a multiple of ``2**(len(channels) - 1)`` inside and cropped back).

    Raises:
        ValueError: for bad channels/blocks/options, or a wrong crop size when the VAE trains.

    Example:
        >>> import torch
        >>> net = UNet3D(3, 2, 3, channels=(8, 16), blocks=1)
        >>> net(torch.randn(1, 2, 7, 9, 8)).shape
        torch.Size([1, 3, 7, 9, 8])
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 4,
        out_channels: int = 3,
        *,
        channels: Sequence[int] = (16, 32, 64, 128),
        blocks: int | Sequence[int] = 1,
        act: str | tuple = DEFAULT_ACT,
        norm: str | tuple = DEFAULT_NORM,
        dropout: float = 0.0,
        vae: bool = False,
        input_image_size: Sequence[int] | None = None,
        vae_weights: tuple[float, float] = (0.1, 0.1),
    ) -> None:
        super().__init__(
            spatial_dims, in_channels, out_channels, channels=channels, blocks=blocks, act=act,
            norm=norm, dropout=dropout, vae=vae, input_image_size=input_image_size,
            vae_weights=vae_weights,
        )  # fmt: skip
        self.build()

    def make_stage(self, channels: int, blocks: int) -> nn.Module:
        return nn.Sequential(*self.make_blocks(ResidualBlock, channels, blocks))
