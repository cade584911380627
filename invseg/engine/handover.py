"""Tensors a network lets go of after forward and gets back, rebuilt, before backward reads them.

A U-Net keeps each encoder level's output for two readers in backward: the strided
convolution that down-samples it and, in ``"invert"`` mode, the encoder chain that rebuilds its
blocks from it. With an additive skip (``x = up(h) + skip``, Brügger et al.'s partially
reversible U-Net) the decoder chain's backward rebuilds ``x`` anyway, so
``skip = x - up(h)`` is known again before either reader runs. A :class:`Slot` carries it:
the decoder fills it (:meth:`~invseg.engine.InvertibleSequential.linked` with
``input_sink``), the encoder chain (``output_slot``) and :func:`slot_conv` read it. Nothing
full-resolution is held from forward to the decoder's backward.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from invseg.engine._unit import conv_backward

__all__ = ["Slot", "slot_conv"]


class Slot:
    """A tensor handed over from one part of a backward pass to a later one.

    Example:
        >>> slot = Slot()
        >>> slot.put(torch.ones(2)); slot.get().tolist(), slot.take().tolist(), slot.value
        ([1.0, 1.0], [1.0, 1.0], None)
    """

    def __init__(self) -> None:
        self.value: Tensor | None = None

    def put(self, value: Tensor) -> None:
        """Hand ``value`` over (replacing anything held)."""
        self.value = value

    def get(self) -> Tensor:
        """The tensor handed over; a clear error if backward has not rebuilt it."""
        if self.value is None:
            raise RuntimeError(
                "invseg: a tensor released after forward was not rebuilt before backward "
                "needed it: the backward pass did not run through the decoder level that "
                "rebuilds it (a loss that reaches only part of the network?). Use "
                "memory='checkpoint' for such losses."
            )
        return self.value

    def take(self) -> Tensor:
        """:meth:`get`, then let go of the tensor (its last reader)."""
        value, self.value = self.get(), None
        return value


class _SlotConv(torch.autograd.Function):
    """``conv(x)`` that saves nothing of ``x``: backward reads it from the slot."""

    @staticmethod
    def forward(ctx, conv: nn.Module, slot: Slot, x: Tensor, *params: Tensor) -> Tensor:
        ctx.conv, ctx.slot, ctx.dtype = conv, slot, x.dtype
        device = x.device.type
        ctx.autocast = (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        return conv(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        device, enabled, dtype = ctx.autocast
        x = ctx.slot.get().to(ctx.dtype)
        with torch.autocast(device, dtype=dtype, enabled=enabled):
            grad_x, grad_w, grad_b = conv_backward(ctx.conv, x, grad)
        grads = [grad_w] + ([grad_b] if ctx.conv.bias is not None else [])
        return None, None, grad_x, *grads


def slot_conv(conv: nn.Conv3d, x: Tensor, slot: Slot) -> Tensor:
    """``conv(x)`` keeping nothing of ``x`` for backward, which reads it from ``slot``.

    ``conv`` is a plain convolution (zero padding, its own weight and bias). ``slot`` must be
    filled with ``x`` (or a tensor equal to it) before backward reaches the convolution.

    Example:
        >>> conv, slot = nn.Conv3d(2, 4, 3, stride=2, padding=1), Slot()
        >>> x = torch.randn(1, 2, 4, 4, 4, requires_grad=True)
        >>> y = slot_conv(conv, x, slot)
        >>> slot.put(x.detach()); y.sum().backward()
        >>> x.grad.shape, conv.weight.grad.shape
        (torch.Size([1, 2, 4, 4, 4]), torch.Size([4, 2, 3, 3, 3]))
    """
    params = [conv.weight] + ([conv.bias] if conv.bias is not None else [])
    return _SlotConv.apply(conv, slot, x, *params)
