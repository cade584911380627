"""The tape: gradient bookkeeping while an invertible chain runs backwards."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from invseg.engine._rng import RNGState


class Tape:
    """Accumulates gradients of the chain's parameters and context tensors.

    The engine's autograd Function takes parameters and grad-requiring context tensors as
    explicit inputs (so DDP, gradient accumulation and hooks see them); its backward returns
    the gradients this tape collected. Blocks that implement a fused ``reverse`` call
    :meth:`vjp` for each graded sub-computation.

    Args:
        sources: parameters and context tensors whose gradients are wanted (de-duplicated).
        context: the chain's context arguments, passed to every block.
    """

    def __init__(self, sources: Sequence[Tensor], context: tuple) -> None:
        self.sources = list(sources)
        self.context = context
        self.grads: list[Tensor | None] = [None] * len(self.sources)
        self._index = {id(t): i for i, t in enumerate(self.sources)}
        self._context_sources = [
            t for t in context if isinstance(t, Tensor) and id(t) in self._index
        ]
        self._per_module: dict[int, list[Tensor]] = {}
        self.rng: list[RNGState] = []

    def _sources_of(self, module: nn.Module) -> list[Tensor]:
        found = self._per_module.get(id(module))
        if found is None:
            params = {id(p): p for p in module.parameters() if id(p) in self._index}
            found = [*params.values(), *self._context_sources]
            self._per_module[id(module)] = found
        return found

    def vjp(
        self,
        module: nn.Module,
        outputs: Sequence[Tensor],
        grad_outputs: Sequence[Tensor],
        inputs: Sequence[Tensor],
    ) -> list[Tensor]:
        """Back-propagate ``grad_outputs`` through a graph built by ``module``.

        Gradients of ``module``'s parameters and of the context tensors are accumulated on
        the tape; gradients of ``inputs`` (leaves created by the caller) are returned, with
        zeros where an input does not influence the outputs.
        """
        pairs = [(o, g) for o, g in zip(outputs, grad_outputs) if o.requires_grad]
        if not pairs:
            return [torch.zeros_like(t) for t in inputs]
        sources = self._sources_of(module)
        grads = torch.autograd.grad(
            [o for o, _ in pairs],
            [*inputs, *sources],
            [g.to(o.dtype) for o, g in pairs],
            allow_unused=True,
        )
        for source, grad in zip(sources, grads[len(inputs) :]):
            self.accumulate(source, grad)
        return [
            torch.zeros_like(t) if g is None else g for t, g in zip(inputs, grads[: len(inputs)])
        ]

    def accumulate(self, source: Tensor, grad: Tensor | None) -> None:
        """Add ``grad`` to the gradient of ``source`` (ignored if it is not a source)."""
        i = self._index.get(id(source))
        if i is None or grad is None:
            return
        self.grads[i] = grad if self.grads[i] is None else self.grads[i] + grad

    def pop_rng(self) -> RNGState | None:
        """The most recently recorded RNG state of the current block, or ``None``."""
        return self.rng.pop() if self.rng else None
