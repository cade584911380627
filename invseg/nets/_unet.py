"""The U-Net frame shared by the three nets, and the residual U-Net of UNet3D and Partially."""

from __future__ import annotations

import functools
import inspect
import itertools
import math
import typing
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from invseg._choices import check_option, did_you_mean
from invseg.engine import MEMORY_MODES, Slot, slot_conv
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
    per_level_strides,
)
from invseg.nets.vae import VAEBranch

#: ``run_level(fn, *args) -> fn(*args)``, possibly under a memory mechanism.
LevelRunner = Callable[..., Tensor]
#: What a net returns: the logits (a list of them, full resolution first, under deep
#: supervision), or ``(logits, vae_loss)`` while its VAE branch trains.
Logits = Tensor | list[Tensor]
NetOutput = Logits | tuple[Logits, Tensor]


class UNetFrame(nn.Module):
    """What every net of this package checks and keeps: its options, levels, memory and VAE.

    Its constructor is the one place the arguments the nets share are written and checked (the
    public ones of :class:`~invseg.nets.UNet3D`); a net adds its own with :func:`net_signature`.
    It sets ``spatial_dims``, ``in_channels``, ``out_channels``, ``channels``, ``levels``,
    ``blocks`` (one per level), ``act``, ``norm``, ``dropout``, ``input_image_size``,
    ``strides`` (one ``(D, H, W)`` stride per down-sampling), ``multiples`` (per axis, the
    product of the strides: inputs are padded to them), ``multiple`` (the largest: a cube side
    that every axis accepts, ``2**(levels - 1)`` by default), ``vae``,
    ``vae_weights`` and ``vae_branch`` (``None`` until :meth:`make_layers` sets it with
    :meth:`make_vae`), and ``supervision_heads`` (``None`` unless ``deep_supervision``: one 1x1
    conv per decoder level below full resolution, created last by :meth:`build`, so the other
    layers' seeded weights are those of the net without them). Each net then sets its own
    options and calls :meth:`build`, which creates its layers (in its own order, which fixes
    the seeded weights) and applies ``memory``.
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
        deep_supervision: bool = False,
        strides: Sequence[int | Sequence[int]] | None = None,
    ) -> None:
        super().__init__()
        channels = check_common(spatial_dims, in_channels, out_channels, channels, dropout)
        self.spatial_dims, self.in_channels = spatial_dims, in_channels
        self.out_channels, self.channels = out_channels, channels
        self.levels = len(channels)
        self.blocks = per_level(blocks, self.levels)
        self.act, self.norm, self.dropout = check_act(act), check_norm(norm), dropout
        self._memory = check_option("memory", memory, MEMORY_MODES)  # applied by build()
        self.input_image_size = check_vae_size(input_image_size, vae, spatial_dims)
        self.strides = per_level_strides(strides, self.levels)
        self.multiples = tuple(math.prod(s[a] for s in self.strides) for a in range(3))
        self.multiple = max(self.multiples)
        if vae and any(s != (2, 2, 2) for s in self.strides):
            raise ValueError(
                f"vae=True needs strides of 2 on every axis (its decoder up-samples by 2), got "
                f"strides={strides!r}."
            )
        self.vae, self.vae_weights = vae, vae_weights
        self.vae_branch: VAEBranch | None = None
        self.supervision_heads: nn.ModuleList | None = None
        self._deep_supervision = bool(deep_supervision)

    @property
    def deep_supervision(self) -> bool:
        """Whether training forwards return one logit map per decoder level (settable)."""
        return self._deep_supervision

    @deep_supervision.setter
    def deep_supervision(self, value: bool) -> None:
        if value and self.supervision_heads is None:
            raise ValueError(
                f"{type(self).__name__} was built without deep supervision heads; construct it "
                "with deep_supervision=True to switch deep supervision on."
            )
        self._deep_supervision = bool(value)

    #: under deep supervision, return every level in evaluation mode too (nnU-Net's trainer
    #: validates on them; :mod:`invseg.nnunet` sets it)
    supervise_in_eval = False

    def supervises(self) -> bool:
        """Whether this forward returns every decoder level's logits: deep supervision on and
        training (as MONAI's ``DynUNet``: inference sees the full-resolution logits only), or
        in evaluation too where :attr:`supervise_in_eval` says so."""
        return self._deep_supervision and (self.training or self.supervise_in_eval)

    @property
    def memory(self) -> str:
        """How the net keeps activations for backward; setting it switches every layer."""
        return self._memory

    @memory.setter
    def memory(self, value: str) -> None:
        self._memory = self.switch_memory(check_option("memory", value, MEMORY_MODES))

    def switch_memory(self, mode: str) -> str:
        """Put the layers in memory mode ``mode`` (checked); return the mode the net reports."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"memory={self.memory!r}"

    def build(self) -> None:
        """Create the layers (:meth:`make_layers`), the deep-supervision heads if asked for, and
        put them in the memory mode asked for."""
        self.make_layers()
        if self._deep_supervision:
            widths = self.level_channels()[1 : self.levels - 1]
            self.supervision_heads = nn.ModuleList(
                [conv(self.spatial_dims, c, self.out_channels, 1) for c in widths]
            )
        self.memory = self._memory

    def level_channels(self) -> Sequence[int]:
        """Channels of the decoder output at each level (what a supervision head reads)."""
        return self.channels

    def make_layers(self) -> None:
        """Create the layers (subclasses); :meth:`build` calls it once."""
        raise NotImplementedError

    def make_blocks(self, block: type[nn.Module], channels: int, count: int) -> list[nn.Module]:
        """``count`` residual blocks of class ``block`` on ``channels``, with the net's options."""
        kw = {"spatial_dims": self.spatial_dims, "act": self.act, "norm": self.norm}
        return [block(channels, dropout=self.dropout, **kw) for _ in range(count)]

    def make_vae(self, channels: Sequence[int]) -> VAEBranch:
        """The VAE branch from a bottleneck of ``channels[-1]`` channels, decoding back up."""
        padded = [s + (-s) % self.multiple for s in self.input_image_size]  # isotropic strides
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

    def output(
        self,
        logits: Tensor,
        vae_loss: Tensor | None,
        size: Sequence[int],
        levels: Sequence[Tensor] = (),
    ) -> NetOutput:
        """What ``forward`` returns: ``logits`` cropped to ``size``, or ``[logits, *deeper]``
        when :meth:`supervises` (``levels``: the decoder outputs of levels ``1 .. L-2``, each
        through its head, cropped to ``size`` divided by the strides down to it, rounded up);
        then ``(that, vae_loss)`` while the VAE branch trains (MONAI style)."""
        out: Logits = crop_to(logits, size)
        if levels:
            deeper, factors = [], [1, 1, 1]
            for head, h, stride in zip(self.supervision_heads, levels, self.strides):
                factors = [f * s for f, s in zip(factors, stride)]
                deeper.append(crop_to(head(h), [-(-s // f) for s, f in zip(size, factors)]))
            out = [out, *deeper]
        return out if vae_loss is None else (out, vae_loss)


def net_signature(init: Callable[..., None]) -> Callable[..., None]:
    """Give a net's ``__init__(self, *args, <its own keywords>, **options)`` its full signature.

    The shared arguments are written once, on :class:`UNetFrame`; a net's ``__init__`` names
    only its own keyword arguments and the defaults it changes (e.g. ``memory``), and passes
    ``*args, **options`` on. The decorated ``__init__`` has the shared parameters with the
    net's own (its defaults win; its new arguments come last) as the signature and type hints
    that ``inspect.signature``, ``help()``, the checkpoint registry and the config checks read,
    and an argument outside them is a ``TypeError`` naming the net, with a did-you-mean hint.

    Example:
        >>> import inspect
        >>> from invseg.nets import PartiallyInvResUNet
        >>> list(inspect.signature(PartiallyInvResUNet).parameters)[-3:]
        ['deep_supervision', 'strides', 'anchor_every']
        >>> inspect.signature(PartiallyInvResUNet).parameters["memory"].default
        'invert'
    """
    shared = inspect.signature(UNetFrame.__init__).parameters
    own = {n: p for n, p in inspect.signature(init).parameters.items() if p.kind is p.KEYWORD_ONLY}
    signature = inspect.Signature([own.pop(n, p) for n, p in shared.items()] + [*own.values()])
    hints = typing.get_type_hints(UNetFrame.__init__) | typing.get_type_hints(init)

    @functools.wraps(init)
    def wrapper(self: UNetFrame, *args: Any, **kwargs: Any) -> None:
        try:
            signature.bind(self, *args, **kwargs)
        except TypeError as err:
            unknown = next((k for k in kwargs if k not in signature.parameters), None)
            hint = "" if unknown is None else did_you_mean(unknown, signature.parameters)
            raise TypeError(f"{type(self).__name__}: {err}.{hint}") from None
        init(self, *args, **kwargs)

    wrapper.__signature__ = signature  # type: ignore[attr-defined]
    wrapper.__annotations__ = {k: v for k, v in hints.items() if k in signature.parameters}
    return wrapper


class ResUNetBase(UNetFrame):
    """Stem conv, per-level residual stages, strided-conv down, transposed-conv up, additive skips.

    Level ``i`` works at ``1/2**i`` resolution with ``channels[i]`` channels. Encoder level
    ``i < L-1``: stage, keep as skip, strided 3^3 conv to ``channels[i+1]``. Bottom: one stage.
    Decoder level ``i``: transposed 2^3 conv from ``channels[i+1]``, add the skip, stage. Head:
    1x1 conv. Subclasses define :meth:`make_stage` (``blocks`` residual blocks on ``channels``).
    The down- and up-sampling of level ``i`` use ``strides[i]`` (2 on every axis by default;
    ``(1, 2, 2)`` keeps the depth of thick slices). Inputs of any size are zero-padded to a
    multiple of the strides' product per axis (:attr:`multiples`) and cropped back.
    """

    def make_layers(self) -> None:
        channels, dims = self.channels, self.spatial_dims
        self.stem = conv(dims, self.in_channels, channels[0], 3)
        self.encoder = nn.ModuleList(
            [self.make_stage(c, n) for c, n in zip(channels[:-1], self.blocks[:-1])]
        )
        pairs = list(zip(itertools.pairwise(channels), self.strides))
        self.down = nn.ModuleList([conv(dims, a, b, 3, stride=s) for (a, b), s in pairs])
        self.bottom = self.make_stage(channels[-1], self.blocks[-1])
        self.up = nn.ModuleList(
            [conv(dims, b, a, stride=s, transposed=True) for (a, b), s in pairs]
        )
        self.decoder = nn.ModuleList(
            [self.make_stage(c, n) for c, n in zip(channels[:-1], self.blocks[:-1])]
        )
        self.head = conv(dims, channels[0], self.out_channels, 1)
        if self.vae:
            self.vae_branch = self.make_vae(channels)

    def make_stage(self, channels: int, blocks: int) -> nn.Module:
        raise NotImplementedError

    def forward(self, x: Tensor) -> NetOutput:
        return self.forward_levels(x, self.run_level)

    def run_level(self, fn: Callable[..., Tensor], *args: Tensor) -> Tensor:
        """Run one level, ``fn(*args)``: plainly here; UNet3D may checkpoint it."""
        return fn(*args)

    def forward_levels(self, x: Tensor, run_level: LevelRunner) -> NetOutput:
        """The forward pass with each level run as ``run_level(fn, *args)``.

        The levels are each encoder stage, the bottom stage and each decoder step (up-sampling,
        skip addition and stage); the stem, the strided down-sampling convs, the head and the
        VAE branch run outside them. ``forward`` passes :meth:`run_level`; a memory mechanism
        (e.g. a checkpoint per level) is a ``run_level`` that wraps the call. Returns what
        ``forward`` does: the logits, or ``(logits, vae_loss)`` while the VAE branch trains.
        """
        check_input(self, x)
        use_vae = self.vae_branch is not None and self.training
        h, size = pad_to_multiple(x, self.multiples)
        h = self.stem(h)
        skips, slots, decoded = [], [], []
        for stage, down in zip(self.encoder, self.down):
            slot = Slot() if self.rebuilds_skips() else None
            h = run_level(functools.partial(_encode, stage, slot), h)
            skips.append(h)
            slots.append(slot)
            h = down(h) if slot is None else slot_conv(down, h, slot)
        h = run_level(self.bottom, h)
        vae_loss = self.vae_branch(h, x)[1] if use_vae else None
        levels = zip(reversed(self.decoder), reversed(self.up), reversed(slots))
        for (stage, up, slot), skip in zip(levels, reversed(skips)):
            h = run_level(functools.partial(_decode, stage, up, slot), h, skip)
            decoded.append(h)
        del skips
        levels = decoded[-2::-1] if self.supervises() else ()  # levels 1 .. L-2
        return self.output(self.head(h), vae_loss, size, levels)

    def rebuilds_skips(self) -> bool:
        """Whether this forward lets go of the skips, rebuilt in backward from the decoder
        (:mod:`invseg.engine.handover`): Partially's invertible stages in ``"invert"`` mode."""
        return False


def _encode(stage: nn.Module, slot: Slot | None, h: Tensor) -> Tensor:
    if slot is None:
        return stage(h)
    with stage.linked(output_slot=slot):  # backward takes the output from the slot
        return stage(h)


def _decode(stage: nn.Module, up: nn.Module, slot: Slot | None, h: Tensor, skip: Tensor) -> Tensor:
    x = up(h) + skip
    if slot is None:
        return stage(x)
    rebuild = functools.partial(_rebuild_skip, up, h.detach(), slot)
    with stage.linked(input_sink=rebuild) as link:
        y = stage(x)
    if not link.used:  # the decoder stage keeps no rebuildable graph: hand the skip over now
        slot.put(skip.detach())
    return y


def _rebuild_skip(up: nn.Module, h: Tensor, slot: Slot, x: Tensor, owned: bool) -> None:
    """``skip = x - up(h)`` from the decoder stage's rebuilt input ``x``, into the slot."""
    with torch.no_grad():
        u = up(h)
        slot.put(x.sub_(u) if owned else x - u)


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
