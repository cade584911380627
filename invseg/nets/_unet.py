"""The U-Net frame shared by the three nets, and the residual U-Net of UNet3D and Partially."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence

from torch import Tensor, nn

from invseg.nets._layers import (
    DEFAULT_ACT,
    DEFAULT_NORM,
    check_act,
    check_common,
    check_norm,
    check_vae_size,
    conv,
    crop_to,
    pad_to_multiple,
    per_level,
)
from invseg.nets.vae import VAEBranch

#: ``run_level(fn, *args) -> fn(*args)``, possibly under a memory mechanism.
LevelRunner = Callable[..., Tensor]


class UNetFrame(nn.Module):
    """What every net of this package checks and keeps: its options, levels and VAE branch.

    Sets ``spatial_dims``, ``in_channels``, ``out_channels``, ``channels``, ``levels``,
    ``blocks`` (one per level), ``act``, ``norm``, ``dropout``, ``input_image_size``,
    ``multiple`` (``2**(levels - 1)``, the size inputs are padded to), ``vae``,
    ``vae_weights``, ``vae_branch`` (``None`` until :meth:`build` sets it with
    :meth:`make_vae`) and ``vae_loss``. Each net then sets its own options and calls
    :meth:`build`, which creates its layers (in its own order, which fixes the seeded weights).
    The arguments and defaults are the public ones of :class:`~invseg.nets.UNet3D`.
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
        super().__init__()
        channels = check_common(spatial_dims, in_channels, out_channels, channels, dropout)
        self.spatial_dims, self.in_channels, self.out_channels = (
            spatial_dims,
            in_channels,
            out_channels,
        )
        self.channels = channels
        self.levels = len(channels)
        self.blocks = per_level(blocks, self.levels)
        self.act, self.norm, self.dropout = check_act(act), check_norm(norm), dropout
        self.input_image_size = check_vae_size(input_image_size, vae, spatial_dims)
        self.multiple = 2 ** (self.levels - 1)
        self.vae, self.vae_weights = vae, vae_weights
        self.vae_branch: VAEBranch | None = None
        self.vae_loss: Tensor | None = None

    def build(self) -> None:
        """Create the layers (subclasses); each net calls it once at the end of ``__init__``."""
        raise NotImplementedError

    def make_blocks(self, block: type[nn.Module], channels: int, count: int) -> list[nn.Module]:
        """``count`` residual blocks of class ``block`` on ``channels``, with the net's options."""
        kw = {"spatial_dims": self.spatial_dims, "act": self.act, "norm": self.norm}
        return [block(channels, dropout=self.dropout, **kw) for _ in range(count)]

    def make_vae(self, channels: Sequence[int]) -> VAEBranch:
        """The VAE branch from a bottleneck of ``channels[-1]`` channels, decoding back up."""
        padded = [s + (-s) % self.multiple for s in self.input_image_size]
        return VAEBranch(
            self.spatial_dims,
            channels[-1],
            self.in_channels,
            bottleneck_size=[s // self.multiple for s in padded],
            up_channels=tuple(reversed(channels)),
            act=self.act,
            norm=self.norm,
            weights=self.vae_weights,
        )


class ResUNetBase(UNetFrame):
    """Stem conv, per-level residual stages, strided-conv down, transposed-conv up, additive skips.

    Level ``i`` works at ``1/2**i`` resolution with ``channels[i]`` channels. Encoder level
    ``i < L-1``: stage, keep as skip, strided 3^3 conv to ``channels[i+1]``. Bottom: one stage.
    Decoder level ``i``: transposed 2^3 conv from ``channels[i+1]``, add the skip, stage. Head:
    1x1 conv. Subclasses define :meth:`make_stage` (``blocks`` residual blocks on ``channels``).
    Inputs of any size are zero-padded to a multiple of ``2**(L-1)`` and cropped back.
    """

    def build(self) -> None:
        channels, dims = self.channels, self.spatial_dims
        self.stem = conv(dims, self.in_channels, channels[0], 3)
        self.encoder = nn.ModuleList(
            [self.make_stage(c, n) for c, n in zip(channels[:-1], self.blocks[:-1])]
        )
        self.down = nn.ModuleList(
            [conv(dims, a, b, 3, stride=2) for a, b in itertools.pairwise(channels)]
        )
        self.bottom = self.make_stage(channels[-1], self.blocks[-1])
        self.up = nn.ModuleList(
            [conv(dims, b, a, stride=2, transposed=True) for a, b in itertools.pairwise(channels)]
        )
        self.decoder = nn.ModuleList(
            [self.make_stage(c, n) for c, n in zip(channels[:-1], self.blocks[:-1])]
        )
        self.head = conv(dims, channels[0], self.out_channels, 1)
        if self.vae:
            self.vae_branch = self.make_vae(channels)

    def make_stage(self, channels: int, blocks: int) -> nn.Module:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_levels(x, self.run_level)

    def run_level(self, fn: Callable[..., Tensor], *args: Tensor) -> Tensor:
        """Run one level, ``fn(*args)``: plainly here; UNet3D may checkpoint it."""
        return fn(*args)

    def forward_levels(self, x: Tensor, run_level: LevelRunner) -> Tensor:
        """The forward pass with each level run as ``run_level(fn, *args)``.

        The levels are each encoder stage, the bottom stage and each decoder step (up-sampling,
        skip addition and stage); the stem, the strided down-sampling convs, the head and the
        VAE branch run outside them. ``forward`` passes :meth:`run_level`; a memory mechanism
        (e.g. a checkpoint per level) is a ``run_level`` that wraps the call.
        """
        check_input(self, x)
        use_vae = self.vae_branch is not None and self.training
        h, size = pad_to_multiple(x, self.multiple)
        h = self.stem(h)
        skips = []
        for stage, down in zip(self.encoder, self.down):
            h = run_level(stage, h)
            skips.append(h)
            h = down(h)
        h = run_level(self.bottom, h)
        self.vae_loss = self.vae_branch(h, x)[1] if use_vae else None
        for stage, up, skip in zip(reversed(self.decoder), reversed(self.up), reversed(skips)):
            h = run_level(functools.partial(_decode, stage, up), h, skip)
        return crop_to(self.head(h), size)


def _decode(stage: nn.Module, up: nn.Module, h: Tensor, skip: Tensor) -> Tensor:
    return stage(up(h) + skip)


def check_input(model: nn.Module, x: Tensor) -> None:
    """Check the input's rank and channels, and the fixed crop when the VAE trains."""
    if x.ndim != model.spatial_dims + 2 or x.shape[1] != model.in_channels:
        raise ValueError(
            f"{type(model).__name__} expects (B, {model.in_channels}, D, H, W) input, got shape "
            f"{tuple(x.shape)}."
        )
    if model.vae_branch is not None and model.training:
        if tuple(x.shape[2:]) != model.input_image_size:
            raise ValueError(
                f"the training crop is fixed when the VAE is on: expected spatial size "
                f"{model.input_image_size} (input_image_size), got {tuple(x.shape[2:])}. Crop "
                "training inputs to that size, or call model.eval() for inference at any size."
            )
