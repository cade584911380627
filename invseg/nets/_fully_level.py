"""Building blocks of the Fully-InvRes body: the recursive invertible level and the VAE tap."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from invseg.engine import (
    Tape,
    forward_block,
    forward_owned,
    reverse_block,
    reverse_owned,
    shares_storage,
)


class InvertibleLevel(nn.Module):
    r"""One level of an invertible U-Net as a single invertible block (iUNet style).

    .. math::
        h = E(x),\quad (s, d) = \mathrm{split}(h),\quad
        d' = U\big(I(D(d))\big),\quad y = \mathrm{Dec}([s, d'])

    with ``E``/``Dec`` chains of invertible blocks at this level, ``D`` the invertible
    down-sampling (squeeze + orthogonal mixing), ``I`` the next level (recursively another
    :class:`InvertibleLevel`, or the bottom chain) and ``U`` the invertible up-sampling. The
    ``skip_channels`` channels :math:`s` bypass the deeper levels, replacing the U-Net skip. The
    inverse runs the same steps backwards. :meth:`reverse` is the engine hook: it rebuilds and
    back-propagates each sub-block in turn (the couplings with their fused RevNet pass), so the
    memory of a backward never exceeds one sub-block's activations, whatever the depth.

    Args:
        encoder: invertible chain at this level before the split.
        down: invertible down-sampling of the ``C - skip_channels`` deep channels.
        inner: the next level (invertible).
        up: invertible up-sampling back to ``C - skip_channels`` channels.
        decoder: invertible chain after the concatenation.
        skip_channels: channels kept aside at this level.
    """

    def __init__(
        self,
        encoder: nn.Module,
        down: nn.Module,
        inner: nn.Module,
        up: nn.Module,
        decoder: nn.Module,
        *,
        skip_channels: int,
    ) -> None:
        super().__init__()
        self.encoder, self.down, self.inner, self.up, self.decoder = (
            encoder,
            down,
            inner,
            up,
            decoder,
        )
        self.skip_channels = skip_channels

    @property
    def retains_output(self) -> bool:
        """Whether the output is kept by its last block (a tap): the engine must not reuse it."""
        return getattr(self.decoder, "retains_output", False)

    def _deep_path(self) -> tuple[nn.Module, ...]:
        return (self.down, self.inner, self.up)

    def forward(self, x: Tensor, *context: object) -> Tensor:
        if not torch.is_grad_enabled():
            return self._forward_owned(x, context, owned=False)
        h = forward_block(self.encoder, x, context)
        skip, deep = h[:, : self.skip_channels], h[:, self.skip_channels :]
        for block in self._deep_path():
            deep = forward_block(block, deep, context)
        return forward_block(self.decoder, torch.cat([skip, deep], dim=1), context)

    #: without a graph, :meth:`forward_in_place` may overwrite its input
    forwards_in_place = True

    def forward_in_place(self, x: Tensor, *context: object) -> Tensor:
        """:meth:`forward` without a graph, free to overwrite ``x``."""
        return self._forward_owned(x, context, owned=True)

    def _forward_owned(self, x: Tensor, context: tuple, *, owned: bool) -> Tensor:
        h, owned = forward_owned(self.encoder, x, context, owned=owned)
        s = self.skip_channels
        deep, deep_owned = h[:, s:], owned
        for block in self._deep_path():
            deep, deep_owned = forward_owned(block, deep, context, owned=deep_owned)
        # the deep half goes back into h when h is ours: no concatenation of skip and deep
        h = _into(h, s, deep) if owned else torch.cat([h[:, :s], deep], dim=1)
        del deep
        return forward_owned(self.decoder, h, context, owned=True)[0]

    def inverse(self, y: Tensor, *context: object) -> Tensor:
        h = self.decoder.inverse(y, *context)
        skip, deep = h[:, : self.skip_channels], h[:, self.skip_channels :]
        for block in reversed(self._deep_path()):
            deep = block.inverse(deep, *context)
        return self.encoder.inverse(torch.cat([skip, deep], dim=1), *context)

    #: the engine may let :meth:`reverse` overwrite ``y`` and ``grad_y`` (``in_place=True``)
    reverses_in_place = True

    def reverse(
        self, y: Tensor, grad_y: Tensor, tape: Tape, *, in_place: bool = False
    ) -> tuple[Tensor, Tensor]:
        """Engine hook: rebuild the input and back-propagate ``grad_y``, one sub-block at a time."""
        return self._reverse(y, grad_y, tape, need_input=True, in_place=in_place)

    def reverse_gradient(
        self, y: Tensor, grad_y: Tensor, tape: Tape, *, in_place: bool = False
    ) -> Tensor:
        """Engine hook: :meth:`reverse` when nobody reads the rebuilt input."""
        return self._reverse(y, grad_y, tape, need_input=False, in_place=in_place)[1]

    def _reverse(
        self, y: Tensor, grad_y: Tensor, tape: Tape, *, need_input: bool, in_place: bool
    ) -> tuple[Tensor | None, Tensor]:
        h, grad_h, owned = reverse_owned(self.decoder, y, grad_y, tape, owned=in_place)
        s = self.skip_channels
        deep, grad_deep, deep_owned = h[:, s:], grad_h[:, s:], owned
        for block in reversed(self._deep_path()):
            deep, grad_deep, deep_owned = reverse_owned(
                block, deep, grad_deep, tape, owned=deep_owned
            )
        if owned:  # the deep half goes back into h: no concatenation of skip and deep
            x, grad_x = _into(h, s, deep), _into(grad_h, s, grad_deep)
        else:
            x = torch.cat([h[:, :s], deep], dim=1)
            grad_x = torch.cat([grad_h[:, :s], grad_deep], dim=1)
        del h, grad_h, deep, grad_deep
        return reverse_block(self.encoder, x, grad_x, tape, need_input=need_input, in_place=True)


def _into(whole: Tensor, start: int, part: Tensor) -> Tensor:
    """``whole`` with channels ``start:`` replaced by ``part`` (copied in place)."""
    if part.data_ptr() != whole[:, start:].data_ptr() or part.stride() != whole[:, start:].stride():
        if shares_storage(part, whole):
            part = part.clone()  # an overlapping copy would read what it has overwritten
        whole[:, start:].copy_(part)
    return whole


class FeatureTap(nn.Module):
    """Identity block that hands its input to a branch outside the body, also in
    ``memory="invert"``: the VAE reads the bottleneck, deep supervision a decoder level.

    With plain autograd (``"store"``/``"checkpoint"``) ``value`` is part of the graph. In
    ``"invert"`` mode the body runs without a graph; :func:`tap_features` then returns a
    tensor whose gradient is parked in ``pending`` and injected by :meth:`reverse` when the
    engine walks back through the tap, so the branch's loss reaches the body without storing
    anything but the tapped features.
    """

    #: the engine must not overwrite the output it hands on: the tap keeps it in ``value``
    retains_output = True

    def __init__(self) -> None:
        super().__init__()
        self.value: Tensor | None = None
        self.pending: Tensor | None = None

    def forward(self, x: Tensor, *context: object) -> Tensor:
        self.value = x
        return x

    def inverse(self, y: Tensor, *context: object) -> Tensor:
        return y

    def reverse(self, y: Tensor, grad_y: Tensor, tape: Tape) -> tuple[Tensor, Tensor]:
        """Engine hook: pass ``grad_y`` through, plus the VAE's gradient if one is parked."""
        pending, self.pending = self.pending, None
        return y, grad_y if pending is None else grad_y + pending.to(grad_y.dtype)


class _TapGradient(torch.autograd.Function):
    """Return the tap value; park its gradient on the tap before the body's backward runs.

    ``body_output`` is an input only to order the backward: autograd runs this node before
    the body's node, which consumes the parked gradient.
    """

    @staticmethod
    def forward(ctx, value: Tensor, body_output: Tensor, tap: FeatureTap) -> Tensor:
        ctx.tap = tap
        return value.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):
        tap: FeatureTap = ctx.tap
        tap.pending = grad if tap.pending is None else tap.pending + grad
        return None, None, None


def tap_features(tap: FeatureTap, body_output: Tensor) -> Tensor:
    """The features ``tap`` saw in the last forward, differentiable w.r.t. the body."""
    value, tap.value = tap.value, None
    if value is None:
        raise RuntimeError("the feature tap saw no forward pass.")
    if value.requires_grad or not body_output.requires_grad:
        return value
    return _TapGradient.apply(value, body_output, tap)


class ChannelLift(nn.Module):
    r"""Fixed isometric lift of ``in_channels`` to ``channels``: :math:`h = Q x` per voxel.

    :math:`Q` (``channels`` x ``in_channels``) has orthonormal columns (the first columns of a
    seeded random orthogonal matrix, rebuilt identically on every construction), so
    :math:`x = Q^\top h` and the lift is exactly invertible on its range. It has no
    parameters: when the input needs no gradient nothing is saved for backward, unlike a stem
    convolution, which keeps its input volume. A plain zero-padding would leave channels that
    are exactly zero, where ReLU-type kinks make gradients ill-defined; :math:`Q` mixes every
    input into every channel.

    Args:
        in_channels: input channels :math:`C_{in}`.
        channels: output channels :math:`C \ge C_{in}`.

    Example:
        >>> lift = ChannelLift(2, 4)
        >>> x = torch.randn(1, 2, 3, 3, 3)
        >>> h = lift(x)
        >>> h.shape, torch.allclose(lift.inverse(h), x, atol=1e-6)
        (torch.Size([1, 4, 3, 3, 3]), True)
    """

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        if in_channels > channels:
            raise ValueError(
                f"lift=True needs in_channels <= channels[0], got {in_channels} > {channels}."
            )
        self.in_channels, self.channels = in_channels, channels
        g = torch.Generator().manual_seed(0)
        q, _ = torch.linalg.qr(torch.randn(channels, channels, generator=g, dtype=torch.float64))
        self.register_buffer("weight", q[:, :in_channels].float().contiguous(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return torch.einsum("oc,bc...->bo...", self.weight.to(x.dtype), x)

    def inverse(self, h: Tensor) -> Tensor:
        """:math:`Q^\top h` (exact for ``h`` in the range of the lift)."""
        return torch.einsum("co,bc...->bo...", self.weight.to(h.dtype), h)

    def extra_repr(self) -> str:
        return f"{self.in_channels} -> {self.channels}"
