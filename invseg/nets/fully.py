"""Fully-InvRes U-Net: one invertible body with learnable invertible resampling (iUNet style)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from invseg.engine import (
    InvertibleDownsample3d,
    InvertibleSequential,
    InvertibleUpsample3d,
    OrthogonalMix,
)
from invseg.nets._fully_level import ChannelLift, FeatureTap, InvertibleLevel, tap_features
from invseg.nets._layers import conv, pad_to_multiple, per_level_strides
from invseg.nets._unet import NetOutput, UNetFrame, check_input, net_signature
from invseg.nets.res_block import InvertibleResBlock


def fully_invertible_channels(
    channels: Sequence[int], strides: Sequence[int | Sequence[int]] | None = None
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    r"""Channels per level and skip channels of a fully invertible U-Net.

    Invertible down-sampling by ``strides[i]`` multiplies channels by
    :math:`f_i = \prod \text{strides}[i]` (8 for 2 on every axis), so level :math:`i+1` has
    :math:`c_{i+1} = f_i d_i` channels, where :math:`d_i` channels of level :math:`i` go deeper
    and :math:`s_i = c_i - d_i` are kept aside as the skip. We choose
    :math:`d_i = \mathrm{clip}(\lfloor \text{channels}[i+1] / f_i + 1/2 \rfloor, 1, c_i - 1)`
    and :math:`c_0 = \text{channels}[0]`, so the effective channels equal ``channels`` exactly
    whenever ``channels[i+1]`` is a multiple of :math:`f_i` below :math:`f_i` ``channels[i]``
    (e.g. the default ``(16, 32, 64, 128)``: 12 of 16 channels skip at level 0, 4 go deeper and
    become 32).

    Args:
        channels: the widths asked for, one per level.
        strides: one stride per down-sampling (``None``: 2 on every axis).

    Returns:
        ``(effective_channels, skip_channels)``; ``skip_channels`` has one entry per level but
        the last.

    Example:
        >>> fully_invertible_channels((16, 32, 64, 128))
        ((16, 32, 64, 128), (12, 24, 48))
        >>> fully_invertible_channels((8, 20))
        ((8, 24), (5,))
        >>> fully_invertible_channels((16, 32, 64), [[1, 2, 2], 2])
        ((16, 32, 64), (8, 24))
    """
    factors = [math.prod(s) for s in per_level_strides(strides, len(channels))]
    effective, skips = [channels[0]], []
    for target, factor in zip(channels[1:], factors):
        deep = min(max(int(target / factor + 0.5), 1), effective[-1] - 1)  # round half up
        skips.append(effective[-1] - deep)
        effective.append(factor * deep)
    return tuple(effective), tuple(skips)


class FullyInvResUNet(UNetFrame):
    r"""Fully invertible residual 3D U-Net (Fully-InvRes, arXiv 2103.09042; iUNet-style body).

    ``stem`` (3^3 conv to ``channels[0]``) :math:`\to` ``body`` :math:`\to` ``head`` (1x1 conv).
    The body is one invertible function, run as ONE :class:`~invseg.engine.InvertibleSequential`:
    a recursive :class:`InvertibleLevel` per level — encoder chain of
    :class:`~invseg.nets.InvertibleResBlock` s, channel split (:math:`s_i` channels kept aside as
    the skip, the rest down-sampled by :class:`~invseg.engine.InvertibleDownsample3d`: squeeze
    and learnable orthogonal mixing, 8x channels), the next level,
    :class:`~invseg.engine.InvertibleUpsample3d`, concatenation, decoder chain; the bottom level
    is one chain. The body keeps the element count of its input at every level, and in
    ``memory="invert"`` mode it stores only its output: its activation memory does not grow
    with ``blocks`` or ``len(channels)``.

    **How ``channels`` is read**: ``channels[0]`` is the width at full resolution; deeper widths
    are :math:`f_i d_i` with :math:`d_i \approx` ``channels[i+1]`` :math:`/ f_i` channels sent
    deeper, :math:`f_i` the product of ``strides[i]`` (8 by default; see
    :func:`fully_invertible_channels`; exact when ``channels[i+1]`` is a multiple of it). The
    widths used are in ``model.effective_channels``.

    Args:
        spatial_dims: number of spatial dimensions (3).
        in_channels: input channels.
        out_channels: output channels (logits).
        channels: channels per level (``channels[0]`` even).
        blocks: invertible residual blocks per level, used in the encoder and again in the
            decoder of each level (once at the bottom); an int or one per level.
        act: activation name or ``(name, kwargs)``.
        norm: normalisation name or ``(name, kwargs)``.
        dropout: dropout probability inside F and G (replayed exactly in backward).
        memory: ``"invert"``, ``"checkpoint"`` or ``"store"``. ``"checkpoint"`` runs the body
            with plain autograd around its coupling chains and checkpoints those block by block
            (``torch.utils.checkpoint``): each coupling keeps its input and backward holds one
            block's activations at a time.
        vae: add a :class:`~invseg.nets.VAEBranch` from the bottleneck (training only; the
            bottleneck is read by an identity tap inside the body, see :class:`FeatureTap`).
        input_image_size: fixed training crop ``(D, H, W)``, required when ``vae=True``.
        vae_weights: ``(w_rec, w_kl)`` of the VAE loss.
        deep_supervision: while training, return the logits of every decoder level but the
            lowest, full resolution first (a list, as nnU-Net and MONAI's ``DynUNet``), each
            from its own 1x1 head; train with MONAI's ``DeepSupervisionLoss``.
        strides: one stride per down-sampling (``len(channels) - 1``): ``2`` or per axis
            ``(D, H, W)`` with 1s and 2s, e.g. ``[[1, 2, 2], 2]`` to keep the depth of thick
            slices at the first level; ``None``: 2 on every axis.
        lift: replace the stem conv by a parameter-free channel lift (:class:`ChannelLift`:
            a fixed isometry from ``in_channels`` to ``channels[0]``) and the 1x1 head by
            ``out_channels`` evenly spaced channels of the body output, with a learnable
            orthogonal 1x1 mixing as the body's last block (it chooses what the logit channels
            hold); nothing before the first level, so its first coupling skips the
            convolution only a rebuilt input would need. In ``"invert"`` mode one training
            step then keeps only the body output (the logits are a view of it), not also the
            input volume and the logits: 8.1% of the ``"store"`` twin at 1 block per level
            and 32^3 instead of 12.2% (``invseg bench nets``).

    Attributes:
        body: the invertible body (``body(h)``, ``body.inverse(y)``).
        effective_channels: channels per level actually used.

    Shape:
        ``(B, in_channels, D, H, W) -> (B, out_channels, D, H, W)`` for any size (padded to a
        multiple of ``2**(len(channels) - 1)`` inside and cropped back). While the VAE branch
        trains (``vae=True``, training mode) ``forward`` returns ``(logits, vae_loss)``, the
        weighted VAE loss a scalar, as MONAI's ``SegResNetVAE``; else the logits alone.

    Raises:
        ValueError: for odd ``channels[0]``, a bad option (did-you-mean) or a wrong VAE crop.

    Example:
        >>> import torch
        >>> net = FullyInvResUNet(3, 2, 3, channels=(8, 16), memory="invert")
        >>> h = torch.randn(1, 8, 4, 4, 4, dtype=torch.float64)
        >>> torch.allclose(net.double().body.inverse(net.body(h)), h)
        True
        >>> net(torch.randn(1, 2, 5, 6, 7, dtype=torch.float64)).shape
        torch.Size([1, 3, 5, 6, 7])
    """

    @net_signature
    def __init__(
        self, *args: Any, memory: str = "invert", lift: bool = False, **options: Any
    ) -> None:
        super().__init__(*args, memory=memory, **options)
        self.lift = bool(lift)
        self.build()

    def make_layers(self) -> None:
        """Create the stem, the invertible body and the head (memory modes: :attr:`memory`)."""
        channels, lift = self.channels, self.lift
        if lift and self.out_channels > channels[0]:
            raise ValueError(
                f"lift=True reads the logits from channels[0]={channels[0]} channels; "
                f"out_channels={self.out_channels} is more. Widen channels[0] or use lift=False."
            )
        if channels[0] % 2:
            raise ValueError(
                f"channels[0] must be even (the couplings split channels in halves), got "
                f"{channels[0]}."
            )
        self.effective_channels, self.skip_channels = fully_invertible_channels(
            channels, self.strides
        )
        self.stem = (
            ChannelLift(self.in_channels, channels[0])
            if lift
            else conv(self.spatial_dims, self.in_channels, channels[0], 3)
        )
        self.tap = FeatureTap() if self.vae else None
        inner = self._levels()
        # lift: a learnable invertible 1x1 mixing chooses what the logit channels hold
        mix = [OrthogonalMix(channels[0])] if lift else []
        # the body output reaches the user only through the head (a conv), unless lift makes
        # the logits a view of it: backward may then rebuild the body in its storage
        self.body = InvertibleSequential(*inner, *mix, consume_output=not lift)
        self.head = None if lift else conv(self.spatial_dims, channels[0], self.out_channels, 1)
        if self.vae:
            self.vae_branch = self.make_vae(self.effective_channels)

    def _levels(self) -> list[nn.Module]:
        """The body without its lift ends: the bottom chain wrapped level by level."""
        bottom = self._chain(self.effective_channels[-1], self.blocks[-1], self.tap)
        # deep supervision reads each decoder chain below full resolution through a tap
        taps = {i: FeatureTap() for i in range(1, self.levels - 1) if self._deep_supervision}
        self.level_taps = tuple(taps[i] for i in sorted(taps))
        if self.levels == 1:
            return list(bottom.blocks)
        inner = bottom
        for level in reversed(range(self.levels - 1)):
            c, s = self.effective_channels[level], self.skip_channels[level]
            stride = self.strides[level]
            inner = InvertibleLevel(
                self._chain(c, self.blocks[level]),
                InvertibleDownsample3d(c - s, memory="store", stride=stride),
                inner,
                InvertibleUpsample3d(math.prod(stride) * (c - s), stride=stride),
                self._chain(c, self.blocks[level], taps.get(level)),
                skip_channels=s,
            )
        return [inner]

    def level_channels(self) -> tuple[int, ...]:
        """The widths the levels use (:attr:`effective_channels`)."""
        return self.effective_channels

    def _chain(self, channels: int, blocks: int, tap: nn.Module | None = None) -> nn.Module:
        layers = self.make_blocks(InvertibleResBlock, channels, blocks)
        return InvertibleSequential(*layers, *([tap] if tap is not None else []), memory="store")

    def switch_memory(self, mode: str) -> str:
        """Switch the body and its coupling chains.

        ``"checkpoint"``: plain autograd around the coupling chains, each checkpointed per
        block (a checkpoint of the whole body would re-materialise all of it in backward).
        """
        self.body.memory = "store" if mode == "checkpoint" else mode
        for chain in self.body.modules():
            if type(chain) is InvertibleSequential and chain is not self.body:
                chain.memory = "checkpoint" if mode == "checkpoint" else "store"
        return mode

    def forward(self, x: Tensor) -> NetOutput:
        check_input(self, x)
        h, size = pad_to_multiple(x, self.multiples)
        y = self.body(self.stem(h))
        vae_loss = None
        if self.vae_branch is not None and self.training:
            vae_loss = self.vae_branch(tap_features(self.tap, y), x)[1]
        elif self.tap is not None:
            self.tap.value = None
        levels = [tap_features(tap, y) for tap in self.level_taps] if self.supervises() else []
        for tap in self.level_taps:
            tap.value = None
        if self.head is None:
            # lift: the logits are every k-th channel of the body output (a strided view
            # spanning both coupling halves), so the loss saves nothing the engine doesn't keep
            step = self.channels[0] // self.out_channels
            logits = y[:, ::step][:, : self.out_channels]
        else:
            logits = self.head(y)
        return self.output(logits, vae_loss, size, levels)
