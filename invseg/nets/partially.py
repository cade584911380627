"""Partially-InvRes U-Net: invertible residual stages inside an ordinary U-Net frame."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from invseg.engine import InvertibleSequential, set_memory
from invseg.nets._unet import ResUNetBase, net_signature
from invseg.nets.res_block import InvertibleResBlock


class PartiallyInvResUNet(ResUNetBase):
    r"""Partially invertible residual 3D U-Net (Partially-InvRes, arXiv 2103.09042).

    A 3^3 stem conv to ``channels[0]``; at each level :math:`i` an
    :class:`~invseg.engine.InvertibleSequential` of ``blocks[i]``
    :class:`~invseg.nets.InvertibleResBlock` s (additive couplings
    :math:`y_1 = x_1 + F(x_2),\ y_2 = x_2 + G(y_1)`); strided 3^3 conv down to
    ``channels[i+1]``; decoder: transposed 2^3 conv up, **additive** skip (as the Partially
    Reversible U-Net, to keep memory low), invertible stage; 1x1 conv head. Only the
    non-invertible layers store activations: with ``memory="invert"`` each stage keeps only
    its output, so activation memory does not grow with ``blocks``. ``memory="store"`` is the
    plain-autograd twin with identical weights.

    Args:
        spatial_dims: number of spatial dimensions (3).
        in_channels: input channels.
        out_channels: output channels (logits).
        channels: channels per level (even); ``len(channels)`` levels.
        blocks: invertible residual blocks per level (an int or one per level).
        act: activation name or ``(name, kwargs)``.
        norm: normalisation name or ``(name, kwargs)``.
        dropout: dropout probability inside F and G (replayed exactly in backward).
        memory: ``"invert"``, ``"checkpoint"`` or ``"store"`` (see
            :class:`~invseg.engine.InvertibleSequential`); settable later via ``model.memory``.
        anchor_every: in ``"invert"`` mode keep the input of every ``k``-th block of each
            stage. ``1`` keeps every block's input, the bytes of ``"checkpoint"``, and each
            coupling is then back-propagated from its kept input and known output without
            evaluating a convolution: about the step time of ``"store"``. ``None``: nothing.
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
        ``(B, in_channels, D, H, W) -> (B, out_channels, D, H, W)`` for any size. While the VAE
        branch trains (``vae=True``, training mode) ``forward`` returns ``(logits, vae_loss)``,
        the weighted VAE loss a scalar, as MONAI's ``SegResNetVAE``; else the logits alone.

    Raises:
        ValueError: for odd channels, a bad option (did-you-mean), or a wrong VAE crop.

    Example:
        >>> import torch
        >>> net = PartiallyInvResUNet(3, 2, 3, channels=(8, 16), memory="invert")
        >>> x = torch.randn(1, 2, 8, 8, 8)
        >>> net(x).mean().backward()
        >>> net(x).shape
        torch.Size([1, 3, 8, 8, 8])
    """

    @net_signature
    def __init__(
        self, *args: Any, memory: str = "invert", anchor_every: int | None = None, **options: Any
    ) -> None:
        super().__init__(*args, memory=memory, **options)
        odd = [c for c in self.channels if c % 2]
        if odd:
            raise ValueError(
                f"PartiallyInvResUNet needs even channels (each coupling splits them in halves), "
                f"got {self.channels!r}."
            )
        self.anchor_every = anchor_every  # checked by each stage
        self.build()

    def switch_memory(self, mode: str) -> str:
        set_memory(self, mode)
        return mode

    def rebuilds_skips(self) -> bool:
        """In ``"invert"`` mode the skips are not kept: backward rebuilds each one from its
        decoder stage's rebuilt input, ``skip = x - up(h)`` (:mod:`invseg.engine.handover`).

        So a loss must reach the full-resolution logits (deep supervision's do). While the VAE
        branch trains the skips are kept: its loss alone never passes through the decoder.
        """
        vae = self.vae_branch is not None and self.training
        return self._memory == "invert" and torch.is_grad_enabled() and not vae

    def make_stage(self, channels: int, blocks: int) -> nn.Module:
        return InvertibleSequential(
            *self.make_blocks(InvertibleResBlock, channels, blocks),
            memory=self._memory,
            anchor_every=self.anchor_every,
            consume_output=True,  # read by a conv (and an added skip): backward may reuse it
        )
