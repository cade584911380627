"""UNet3D: the non-invertible residual 3D U-Net baseline."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from invseg.engine import MEMORY_MODES
from invseg.nets._layers import DEFAULT_ACT, DEFAULT_NORM, check_option
from invseg.nets._unet import ResUNetBase
from invseg.nets.res_block import ResidualBlock


class UNet3D(ResUNetBase):
    r"""Residual 3D U-Net, the non-invertible baseline of the InvRes U-Nets.

    Same macro-architecture as :class:`~invseg.nets.PartiallyInvResUNet`: a 3^3 stem conv to
    ``channels[0]``; at level :math:`i` (resolution :math:`2^{-i}`, ``channels[i]`` channels)
    ``blocks[i]`` pre-activation residual blocks :math:`y = x + G(F(x))` with
    :math:`F, G = \mathrm{conv} \circ \mathrm{act} \circ \mathrm{norm}` on all channels; strided
    3^3 conv down, transposed 2^3 conv up, additive skips, 1x1 conv head.

    ``memory`` chooses how the activations of the levels are kept for backward; both modes give
    the same gradients up to rounding:

    * ``"store"``: plain autograd, everything is stored.
    * ``"checkpoint"``: while training with grad enabled, each level (each encoder stage, the
      bottom stage, each decoder step: up-sampling, skip addition and stage) runs under
      ``torch.utils.checkpoint`` (non-reentrant): only its inputs are kept, and backward
      recomputes one level at a time. The stem, the down-sampling convs, the head and the VAE
      branch store as in ``"store"``. In eval mode or without grad it runs as ``"store"``.
    * ``"invert"`` is accepted so that one config or call serves every net of the package, and
      means ``"store"``: as in the invertible nets, the non-invertible layers store, and every
      layer of this net is non-invertible (``net.memory`` then reads ``"store"``).

    Args:
        spatial_dims: number of spatial dimensions (3).
        in_channels: input channels (e.g. 4 MR modalities).
        out_channels: output channels (logits).
        channels: channels per level; ``len(channels)`` levels.
        blocks: residual blocks per level (an int or one per level).
        act: activation name or ``(name, kwargs)`` (MONAI ``Act`` factory).
        norm: normalisation name or ``(name, kwargs)`` (MONAI ``Norm`` factory).
        dropout: dropout probability before each conv (replayed exactly when a level is
            recomputed: the checkpoint restores the RNG state).
        memory: ``"store"`` or ``"checkpoint"`` (``"invert"`` means ``"store"``, see above);
            settable later via ``model.memory``.
        vae: add a :class:`~invseg.nets.VAEBranch` from the bottleneck (training only).
        input_image_size: fixed training crop ``(D, H, W)``, required when ``vae=True``.
        vae_weights: ``(w_rec, w_kl)`` of the VAE loss.

    Attributes:
        vae_loss: the weighted VAE loss of the last training forward, else ``None``.

    Shape:
        ``(B, in_channels, D, H, W) -> (B, out_channels, D, H, W)`` for any ``D, H, W`` (padded
        to a multiple of ``2**(len(channels) - 1)`` inside and cropped back).

    Raises:
        ValueError: for bad channels/blocks/options (an unknown ``memory`` with a did-you-mean
            hint), or a wrong crop size when the VAE trains.

    Example:
        >>> import torch
        >>> net = UNet3D(3, 2, 3, channels=(8, 16), blocks=1, memory="checkpoint")
        >>> x = torch.randn(1, 2, 7, 9, 8)
        >>> net(x).mean().backward()
        >>> net(x).shape, net.memory
        (torch.Size([1, 3, 7, 9, 8]), 'checkpoint')
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
        memory: str = "store",
        vae: bool = False,
        input_image_size: Sequence[int] | None = None,
        vae_weights: tuple[float, float] = (0.1, 0.1),
    ) -> None:
        super().__init__(
            spatial_dims, in_channels, out_channels, channels=channels, blocks=blocks, act=act,
            norm=norm, dropout=dropout, vae=vae, input_image_size=input_image_size,
            vae_weights=vae_weights,
        )  # fmt: skip
        self.memory = memory  # checked by the setter
        self.build()

    #: The memory modes that differ for this net (``"invert"`` has nothing to invert here).
    memory_modes = ("store", "checkpoint")

    @property
    def memory(self) -> str:
        """How the levels keep their activations: ``"store"`` or ``"checkpoint"``."""
        return self._memory

    @memory.setter
    def memory(self, value: str) -> None:
        mode = check_option("memory", value, MEMORY_MODES)
        self._memory = "store" if mode == "invert" else mode

    def extra_repr(self) -> str:
        return f"memory={self.memory!r}"

    def make_stage(self, channels: int, blocks: int) -> nn.Module:
        return nn.Sequential(*self.make_blocks(ResidualBlock, channels, blocks))

    def run_level(self, fn: Callable[..., Tensor], *args: Tensor) -> Tensor:
        """Run one level, under a non-reentrant checkpoint in ``"checkpoint"`` mode."""
        if self._memory == "checkpoint" and self.training and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)
