"""Activation-free backpropagation through a chain of invertible blocks.

Forward runs the blocks without building a graph and keeps only the chain's output. Backward
walks the chain from the end: each block rebuilds its input from its output and back-propagates
the output gradient in the same pass. Blocks with a fused ``reverse`` (the couplings) evaluate
each residual function once with grad (the RevNet algorithm); other blocks are inverted without
grad and recomputed once with grad.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from invseg.engine import _rng
from invseg.engine._tape import Tape
from invseg.engine.handover import Slot


def has_fused_reverse(block: nn.Module) -> bool:
    """Whether ``block`` rebuilds and back-propagates itself in one pass (``reverse``)."""
    return callable(getattr(block, "reverse", None))


def forward_block(block: nn.Module, x: Tensor, context: tuple) -> Tensor:
    """Run one block forward, marking the RNG for blocks without a fused reverse.

    Composite blocks call this for their sub-blocks so that :func:`reverse_block` can replay
    the same random numbers.
    """
    if not has_fused_reverse(block):
        _rng.mark(x.device)
    return block(x, *context)


def forward_owned(
    block: nn.Module, x: Tensor, context: tuple, *, owned: bool
) -> tuple[Tensor, bool]:
    """:func:`forward_block` that tracks whether the engine owns the tensor it hands on.

    Without a graph (``memory="invert"`` forwards, inference) a block whose class sets
    ``forwards_in_place = True`` computes :meth:`forward_in_place`, overwriting ``x``, when
    ``owned`` says nobody else reads ``x``. Returns ``(y, owned)``: ``y`` is owned when it is
    fresh or ``x``'s owned storage, unless the block keeps its output (``retains_output``).
    """
    if owned and not torch.is_grad_enabled() and getattr(block, "forwards_in_place", False):
        y = block.forward_in_place(x, *context)
    else:
        y = forward_block(block, x, context)
    kept = getattr(block, "retains_output", False)
    return y, not kept and (owned or not shares_storage(y, x))


def reverse_block(
    block: nn.Module,
    y: Tensor,
    grad_y: Tensor,
    tape: Tape,
    *,
    need_input: bool = True,
    in_place: bool = False,
) -> tuple[Tensor | None, Tensor]:
    """Rebuild the input of ``block`` from its output and back-propagate ``grad_y``.

    Returns ``(x, grad_x)``; gradients of parameters and context go to ``tape``. With
    ``need_input=False`` (nobody reads ``x`` again, e.g. the first block of a chain) a block
    with a ``reverse_gradient(y, grad_y, tape)`` hook may skip work that only ``x`` needs;
    ``x`` is then ``None``. With ``in_place=True`` (the engine owns ``y`` and ``grad_y``: nobody
    reads them afterwards) a block whose class sets ``reverses_in_place = True`` receives
    ``in_place=True`` and may return ``x`` and ``grad_x`` in their storage.
    """
    kw = {"in_place": True} if in_place and getattr(block, "reverses_in_place", False) else {}
    if not need_input and callable(getattr(block, "reverse_gradient", None)):
        return None, block.reverse_gradient(y, grad_y, tape, **kw)
    if has_fused_reverse(block):
        return block.reverse(y, grad_y, tape, **kw)
    return _generic_reverse(block, y, grad_y, tape)


def reverse_owned(
    block: nn.Module,
    y: Tensor,
    grad_y: Tensor,
    tape: Tape,
    *,
    owned: bool,
    need_input: bool = True,
) -> tuple[Tensor | None, Tensor, bool]:
    """:func:`reverse_block` that tracks whether the engine owns the tensors it hands on.

    ``owned``: whether ``y`` and ``grad_y`` are the engine's own buffers (nobody else reads
    them), so the block may overwrite them. Returns ``(x, grad_x, owned)``: results that share
    no storage with non-owned inputs are fresh, hence owned.
    """
    x, grad_x = reverse_block(block, y, grad_y, tape, need_input=need_input, in_place=owned)
    fresh = not (shares_storage(x, y) or shares_storage(grad_x, grad_y))
    return x, grad_x, owned or fresh


def shares_storage(a: Tensor | None, b: Tensor | None) -> bool:
    """Whether ``a`` and ``b`` are views of one storage (``None`` shares nothing)."""
    if a is None or b is None:
        return False
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def _generic_reverse(
    block: nn.Module, y: Tensor, grad_y: Tensor, tape: Tape
) -> tuple[Tensor, Tensor]:
    state = tape.pop_rng()
    with torch.no_grad(), _rng.replay(state):
        x = block.inverse(y, *tape.context)
    x_leaf = x.detach().requires_grad_()
    with torch.enable_grad(), _rng.replay(state):
        y_again = block(x_leaf, *tape.context)
    (grad_x,) = tape.vjp(block, [y_again], [grad_y], [x_leaf])
    return x.detach(), grad_x


@contextlib.contextmanager
def frozen_buffers(module: nn.Module) -> Iterator[None]:
    """Restore every buffer (e.g. BatchNorm running stats) after a recomputation.

    Forward already updated the statistics once; the backward recomputation must not do it
    a second time. Unchanged buffers are left alone (no version bump).
    """
    buffers = [b for b in module.buffers()]
    if not buffers:
        yield
        return
    saved = [b.detach().clone() for b in buffers]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, s in zip(buffers, saved):
                if not torch.equal(b, s):
                    b.copy_(s)


@dataclass
class ChainRun:
    """What one forward of an ``"invert"`` chain leaves for its backward."""

    chain: nn.Module
    blocks: Sequence[nn.Module]
    context: tuple
    sources: list[Tensor]
    anchor_indices: frozenset[int]
    anchors: dict[int, Tensor] = field(default_factory=dict)
    rng: dict[int, list[_rng.RNGState]] = field(default_factory=dict)
    autocast: tuple[str, bool, torch.dtype] | None = None
    measure_drift: bool = False
    consume_output: bool = False
    #: keep no output for backward: read it from this slot (``.take()``) instead
    output_slot: Slot | None = None
    #: ``input_sink(x, owned)`` receives the chain input rebuilt by backward
    input_sink: Callable[[Tensor, bool], None] | None = None

    def forward(self, x: Tensor) -> Tensor:
        device_type = x.device.type
        self.autocast = (
            device_type,
            torch.is_autocast_enabled(device_type),
            torch.get_autocast_dtype(device_type),
        )
        owned = False  # the caller's input; later inputs are the blocks' own outputs
        for i, block in enumerate(self.blocks):
            if i in self.anchor_indices:
                self.anchors[i] = x
                owned = False
            states = [] if _rng.is_stochastic(block) else None
            with _rng.recording(states):
                x, owned = forward_owned(block, x, self.context, owned=owned)
            if states:
                self.rng[i] = states
        return x

    def backward(self, y: Tensor, grad_y: Tensor) -> tuple[Tensor, list[Tensor | None]]:
        tape = Tape(self.sources, self.context)
        device_type, enabled, dtype = self.autocast
        errors: dict[int, float] = {}
        exact = True  # y is the chain output, or the kept input of the block after
        # the chain's output and incoming gradient are ours to overwrite only if it says so
        owned = self.consume_output and y.is_contiguous() and grad_y.is_contiguous()
        with torch.autocast(device_type, dtype=dtype, enabled=enabled):
            for i in reversed(range(len(self.blocks))):
                block, kept = self.blocks[i], self.anchors.get(i)
                tape.rng = self.rng.get(i, [])
                with frozen_buffers(block):
                    if kept is None:
                        need = i > 0 or self.input_sink is not None
                        y, grad_y, owned = reverse_owned(
                            block, y, grad_y, tape, owned=owned, need_input=need
                        )
                        exact = False
                        continue
                    # An anchored block is differentiated at its kept input, exactly as in
                    # "checkpoint" mode, so drift never reaches this block's gradients or the
                    # blocks before it. Drift is measured only on the steps the chain asks for.
                    if self.measure_drift and not tape.rng:  # stochastic blocks: RNG per step
                        with torch.no_grad():
                            errors[i] = _relative_error(block.inverse(y, *self.context), kept)
                    if exact and callable(getattr(block, "reverse_exact", None)):
                        grad_y = block.reverse_exact(kept.detach(), y, grad_y, tape)
                    elif callable(getattr(block, "reverse_known", None)):
                        grad_y = block.reverse_known(kept.detach(), y, grad_y, tape)
                    else:
                        grad_y = _recompute(block, kept.detach(), grad_y, tape)
                    y, exact, owned = kept.detach(), True, False
            if self.input_sink is not None:
                self.input_sink(y, owned)
        del y
        self.chain._after_backward(errors)
        return grad_y, tape.grads


def _recompute(block: nn.Module, x: Tensor, grad_y: Tensor, tape: Tape) -> Tensor:
    """Back-propagate ``grad_y`` through ``block`` recomputed from its known input ``x``."""
    x_leaf = x.detach().requires_grad_()
    with torch.enable_grad(), _rng.replay(tape.rng[0] if tape.rng else None):
        y_again = block(x_leaf, *tape.context)
    (grad_x,) = tape.vjp(block, [y_again], [grad_y], [x_leaf])
    return grad_x


def _relative_error(rebuilt: Tensor, kept: Tensor) -> float:
    kept = kept.detach()
    scale = torch.linalg.vector_norm(kept).clamp_min(torch.finfo(kept.real.dtype).tiny)
    return float(torch.linalg.vector_norm(rebuilt - kept) / scale)


class InvertFunction(torch.autograd.Function):
    """One autograd node for a whole chain; inputs are ``(run, x, *sources)``."""

    @staticmethod
    def forward(ctx, run: ChainRun, x: Tensor, *sources: Tensor) -> Tensor:
        y = run.forward(x)
        if y.untyped_storage().data_ptr() == x.untyped_storage().data_ptr():
            y = y.clone()  # never hand out (or later save) a view of the caller's tensor
        ctx.run = run
        ctx.anchor_keys = list(run.anchors)
        # Anchors go through save_for_backward: saved-tensor hooks see them and autograd's
        # version counter catches in-place changes to them. The output is not kept when a
        # slot hands it back rebuilt.
        kept = [] if run.output_slot is not None else [y]
        ctx.save_for_backward(*kept, *run.anchors.values())
        run.anchors = {}
        return y

    @staticmethod
    def backward(ctx, grad_y: Tensor):
        if torch.is_grad_enabled():
            raise RuntimeError(
                "invseg: memory='invert' does not support double backward "
                "(create_graph=True); use memory='checkpoint' or memory='store' for "
                "higher-order gradients."
            )
        run: ChainRun = ctx.run
        saved = ctx.saved_tensors
        y, anchors = (run.output_slot.take(), saved) if run.output_slot else (saved[0], saved[1:])
        ctx.run = None  # free the RNG states with the graph
        run.anchors = dict(zip(ctx.anchor_keys, anchors))
        grad_x, grads = run.backward(y.detach(), grad_y)
        return (None, grad_x, *grads)
