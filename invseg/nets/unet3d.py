"""UNet3D: the non-invertible residual 3D U-Net baseline."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from invseg.nets._unet import ResUNetBase, net_signature
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
        deep_supervision: while training, return the logits of every decoder level but the
            lowest, full resolution first (a list, as nnU-Net and MONAI's ``DynUNet``), each
            from its own 1x1 head; train with MONAI's ``DeepSupervisionLoss``.
        strides: one stride per down-sampling (``len(channels) - 1``): ``2`` or per axis
            ``(D, H, W)`` with 1s and 2s, e.g. ``[[1, 2, 2], 2]`` to keep the depth of thick
            slices at the first level; ``None``: 2 on every axis.

    Shape:
        ``(B, in_channels, D, H, W) -> (B, out_channels, D, H, W)`` for any ``D, H, W`` (padded
        to a multiple of ``2**(len(channels) - 1)`` inside and cropped back). While the VAE
        branch trains (``vae=True``, training mode) ``forward`` returns ``(logits, vae_loss)``,
        the weighted VAE loss a scalar, as MONAI's ``SegResNetVAE``; else the logits alone.

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

    @net_signature
    def __init__(self, *args: Any, memory: str = "store", **options: Any) -> None:
        super().__init__(*args, memory=memory, **options)
        self.build()

    #: The memory modes that differ for this net (``"invert"`` has nothing to invert here).
    memory_modes = ("store", "checkpoint")

    def switch_memory(self, mode: str) -> str:
        """``"store"`` or ``"checkpoint"``: how :meth:`run_level` runs the levels."""
        return "store" if mode == "invert" else mode

    def make_stage(self, channels: int, blocks: int) -> nn.Module:
        return nn.Sequential(*self.make_blocks(ResidualBlock, channels, blocks))

    def run_level(self, fn: Callable[..., Tensor], *args: Tensor) -> Tensor:
        """Run one level, under a non-reentrant checkpoint in ``"checkpoint"`` mode."""
        if self._memory == "checkpoint" and self.training and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)
