"""Back-propagation through one residual function ``F`` of a coupling, with little memory.

:func:`unit_vjp` differentiates ``F`` at a rebuilt input. When ``F`` is a plain
``nn.Sequential`` ending in a convolution (the ``norm -> act -> conv`` units of the InvRes
nets), the convolution is evaluated without a graph only if its output is wanted, and is
differentiated from its input (``aten::convolution_backward``); a ReLU or LeakyReLU before it is
differentiated in place from the sign of its output. So the output of ``F``, the activation
and their gradients never coexist: a coupling's backward holds about three half-width maps
at its peak, where autograd over the whole unit holds four or more. Other functions go
through autograd as a whole.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from invseg.engine import _rng
from invseg.engine._tape import Tape

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def unit_vjp(
    owner: nn.Module,
    fn: nn.Module,
    cond: Tensor,
    grad_h: Tensor,
    state: _rng.RNGState | None,
    tape: Tape,
    consume: Callable[[Tensor], object] | None = None,
) -> Tensor:
    """``fn'(cond)^T grad_h``; ``consume(h)`` first receives ``h = fn(cond)`` if given.

    Parameter gradients go to ``tape`` (as ``owner``'s); ``state`` replays ``fn``'s random
    numbers. ``h`` must not be kept by ``consume``: it is freed before the gradient is formed.
    ``consume`` may write into the other half of ``cond``'s storage (a coupling rebuilding its
    input in place) but not into ``cond``.
    """
    cond_leaf = _own_version(cond).requires_grad_()
    parts = None if tape.context else _parts(fn)
    if parts is None:  # autograd over the whole function
        with torch.enable_grad(), _rng.replay(state):
            h = fn(cond_leaf, *tape.context)
        if consume is not None:
            consume(h.detach())
        (grad_cond,) = tape.vjp(owner, [h], [grad_h], [cond_leaf])
        return grad_cond
    prefix, act, slope, conv = parts
    with torch.enable_grad(), _rng.replay(state):
        a = cond_leaf
        for layer in prefix:
            a = layer(a)
    root = a
    if act is not None:
        with torch.no_grad():
            a = act(root)
    if consume is not None:
        with torch.no_grad():
            consume(conv(a.detach()))
    grad = _conv_vjp(conv, a.detach(), grad_h, tape)
    if act is not None:  # its input's sign is its output's (negative_slope >= 0)
        positive = a > 0
        del a
        if slope:
            torch.where(positive, grad, grad * slope, out=grad)
        else:
            grad.masked_fill_(~positive, 0.0)
        del positive
    (grad_cond,) = tape.vjp(owner, [root], [grad], [cond_leaf])
    return grad_cond


def _own_version(t: Tensor) -> Tensor:
    """A detached alias of ``t`` with its own version counter.

    ``t.detach()`` shares ``t``'s counter, which the views of one storage share too: rebuilding
    one half of a coupling's input in place would then look to autograd like a change of the
    other half, which the graph saved.
    """
    alias = torch.empty((0,), dtype=t.dtype, device=t.device)
    return alias.set_(t.untyped_storage(), t.storage_offset(), t.size(), t.stride())


def _parts(fn: nn.Module) -> tuple[list[nn.Module], nn.Module | None, float, nn.Module] | None:
    """``(prefix, act, slope, conv)`` of a plain ``nn.Sequential`` ending in a plain conv.

    ``act`` is the layer before the conv when it is an out-of-place ``nn.ReLU`` (``slope`` 0)
    or ``nn.LeakyReLU`` with ``negative_slope >= 0`` (``slope``), else ``None`` and part of
    ``prefix``. ``None`` for anything else. Exact types only: a subclass or a parametrised
    conv may compute its weight in forward.
    """
    if type(fn) is not nn.Sequential or len(fn) < 2:
        return None
    *prefix, last = list(fn)
    plain = (
        type(last) in _CONVS
        and last.padding_mode == "zeros"
        and not isinstance(last.padding, str)
        and isinstance(last.weight, nn.Parameter)
    )
    if not plain:
        return None
    act = prefix[-1] if prefix else None
    slope = getattr(act, "negative_slope", 0.0)
    known = type(act) in (nn.ReLU, nn.LeakyReLU) and not act.inplace and slope >= 0
    return (prefix[:-1], act, slope, last) if known else (prefix, None, 0.0, last)


def _conv_vjp(
    conv: nn.Conv1d | nn.Conv2d | nn.Conv3d, a: Tensor, grad_out: Tensor, tape: Tape
) -> Tensor:
    """Back-propagate ``grad_out`` through ``conv`` applied to ``a`` without evaluating it.

    Weight and bias gradients go to ``tape``; returns the gradient of ``a``
    (:func:`conv_backward`).
    """
    grad_a, grad_w, grad_b = conv_backward(conv, a, grad_out)
    if grad_w is not None:
        tape.accumulate(conv.weight, grad_w)
    if grad_b is not None:
        tape.accumulate(conv.bias, grad_b)
    return grad_a


def conv_backward(
    conv: nn.Conv1d | nn.Conv2d | nn.Conv3d, a: Tensor, grad_out: Tensor
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Gradients of ``conv(a)`` w.r.t. ``a``, the weight and the bias (``None`` where the
    parameter needs none), without evaluating the conv.

    One ``aten::convolution_backward`` call, as autograd makes it (input, weight and bias
    gradients together). Under autocast the conv is differentiated in the autocast dtype, as
    autograd would; each gradient comes back in the dtype of what it is the gradient of.
    """
    device = a.device.type
    autocast = torch.is_autocast_enabled(device) and a.dtype != torch.float64  # as autocast
    dtype = torch.get_autocast_dtype(device) if autocast else a.dtype
    a_low, w, g = a.to(dtype), conv.weight.detach().to(dtype), grad_out.to(dtype)
    weight = conv.weight.requires_grad
    bias = conv.bias is not None and conv.bias.requires_grad
    grad_a, grad_w, grad_b = torch.ops.aten.convolution_backward(
        g, a_low, w, [w.shape[0]] if bias else None, list(conv.stride), list(conv.padding),
        list(conv.dilation), False, [0] * (a.ndim - 2), conv.groups, [True, weight, bias],
    )  # fmt: skip
    return (
        grad_a.to(a.dtype),
        grad_w.to(conv.weight.dtype) if weight else None,
        grad_b.to(conv.bias.dtype) if bias else None,
    )
