"""Partially-InvRes U-Net: invertible residual stages inside an ordinary U-Net frame."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from invseg.engine import MEMORY_MODES, InvertibleSequential, set_memory
from invseg.nets._layers import DEFAULT_ACT, DEFAULT_NORM, check_option
from invseg.nets._unet import ResUNetBase
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

    Attributes:
        vae_loss: the weighted VAE loss of the last training forward, else ``None``.

    Shape:
        ``(B, in_channels, D, H, W) -> (B, out_channels, D, H, W)`` for any size.

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
        memory: str = "invert",
        anchor_every: int | None = None,
        vae: bool = False,
        input_image_size: Sequence[int] | None = None,
        vae_weights: tuple[float, float] = (0.1, 0.1),
    ) -> None:
        odd = [c for c in channels if not isinstance(c, int) or c % 2]
        if odd:
            raise ValueError(
                f"PartiallyInvResUNet needs even channels (each coupling splits them in halves), "
                f"got {tuple(channels)!r}."
            )
        super().__init__(
            spatial_dims,
            in_channels,
            out_channels,
            channels=channels,
            blocks=blocks,
            act=act,
            norm=norm,
            dropout=dropout,
            vae=vae,
            input_image_size=input_image_size,
            vae_weights=vae_weights,
        )
        self.memory = memory  # checked by the setter; no stage exists yet
        self.anchor_every = anchor_every  # checked by each stage
        self.build()

    @property
    def memory(self) -> str:
        """Memory mode of every invertible stage; setting it switches them all."""
        return self._memory

    @memory.setter
    def memory(self, value: str) -> None:
        self._memory = check_option("memory", value, MEMORY_MODES)
        set_memory(self, self._memory)

    def make_stage(self, channels: int, blocks: int) -> nn.Module:
        return InvertibleSequential(
            *self.make_blocks(InvertibleResBlock, channels, blocks),
            memory=self._memory,
            anchor_every=self.anchor_every,
        )
