"""Chains of invertible blocks with a choice of memory mechanism."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from invseg._choices import check_option
from invseg.engine._engine import (
    ChainRun,
    InvertFunction,
    forward_block,
    forward_owned,
    reverse_owned,
)
from invseg.engine._protocol import MEMORY_MODES, check_block
from invseg.engine._tape import Tape
from invseg.engine.handover import Slot

ON_DRIFT = ("warn", "checkpoint")


class InverseDriftWarning(RuntimeWarning):
    """The rebuilt input of a block differs from the kept one by more than ``drift_tol``."""


class InvertibleSequential(nn.Module):
    r"""A chain of invertible blocks trained without storing their activations.

    ``memory`` chooses how gradients are obtained; all three give the same gradients up to
    rounding:

    * ``"invert"``: forward keeps only the chain's output; backward rebuilds each block's
      input from its output and back-propagates through it in the same pass. Activation
      memory is independent of depth. Couplings evaluate F and G once each in backward.
    * ``"checkpoint"``: ``torch.utils.checkpoint`` per block (keeps each block's input).
    * ``"store"``: plain autograd, the reference twin for parity tests.

    Optional block hooks, all returning the input gradient: ``reverse_exact(x, y, grad_y,
    tape)`` back-propagates an anchored block whose output is held exactly too (couplings then
    evaluate no conv); ``reverse_known`` does the same when the output may be rebuilt (MoDL
    uses it to skip its forward CG); ``reverse_gradient(y, grad_y, tape)`` serves a first
    block, whose rebuilt input nobody reads.

    Context arguments are passed unchanged to every block (``block(x, *context)``); context
    tensors that require grad receive gradients.

    Args:
        *blocks: invertible modules (``forward(x, *context)`` and ``inverse(y, *context)``).
        memory: ``"invert"``, ``"checkpoint"`` or ``"store"``.
        anchor_every: in ``"invert"`` mode keep the input of every ``k``-th block and use it
            in backward instead of the rebuilt one, bounding numerical drift in long chains.
            ``1`` keeps every input, as ``"checkpoint"`` does, at about the speed of
            ``"store"`` for couplings.
        drift_tol: measure the relative error of the rebuilt input at every anchor (the chain
            input when ``anchor_every`` is unset) and warn when it exceeds this tolerance.
            ``None``: nothing is measured (no extra inverse runs).
        drift_every: measure on every ``n``-th backward only (the first one included).
        on_drift: ``"warn"``, or ``"checkpoint"`` to also switch this chain to
            ``memory="checkpoint"`` after a drift is detected.
        consume_output: in ``"invert"`` mode let backward overwrite the chain's output and the
            gradient it receives, rebuilding each block's input in their storage: two feature
            maps fewer at the backward peak. Only for a chain whose output is private to its
            network: read by one operation whose backward hands over a fresh gradient (a
            convolution, the sum of several branches; not an addition that passes the same
            gradient on to two inputs) and by nobody after backward (no user-visible views).

    Attributes:
        inverse_errors: ``{block_index: relative error}`` measured in the last backward.

    Shape:
        ``x``: whatever the first block accepts; output: whatever the last block returns.

    Raises:
        TypeError: if a block is not invertible.
        ValueError: for an unknown ``memory``/``on_drift`` or a bad ``anchor_every``.

    Example:
        >>> import torch
        >>> from invseg.engine import AdditiveCoupling
        >>> chain = InvertibleSequential(
        ...     *[AdditiveCoupling(torch.nn.Conv3d(2, 2, 3, padding=1)) for _ in range(4)]
        ... )
        >>> x = torch.randn(1, 4, 8, 8, 8, requires_grad=True)
        >>> chain(x).square().sum().backward()
        >>> torch.allclose(chain.inverse(chain(x)), x, atol=1e-5)
        True
    """

    def __init__(
        self,
        *blocks: nn.Module,
        memory: str = "invert",
        anchor_every: int | None = None,
        drift_tol: float | None = None,
        on_drift: str = "warn",
        drift_every: int = 1,
        consume_output: bool = False,
    ) -> None:
        super().__init__()
        self.consume_output = bool(consume_output)
        self.blocks = nn.ModuleList([check_block(b, i) for i, b in enumerate(blocks)])
        self.memory = memory
        if anchor_every is not None and (
            isinstance(anchor_every, bool) or not isinstance(anchor_every, int) or anchor_every < 1
        ):
            raise ValueError(f"anchor_every must be a positive int or None, got {anchor_every!r}.")
        if drift_tol is not None and not drift_tol > 0:
            raise ValueError(f"drift_tol must be positive or None, got {drift_tol!r}.")
        if isinstance(drift_every, bool) or not isinstance(drift_every, int) or drift_every < 1:
            raise ValueError(f"drift_every must be a positive int, got {drift_every!r}.")
        self.anchor_every = anchor_every
        self.drift_tol = drift_tol
        self.drift_every = drift_every
        self._backwards = 0  # invert-mode forwards so far, for drift sampling
        self.on_drift = check_option("on_drift", on_drift, ON_DRIFT)
        self.inverse_errors: dict[int, float] = {}
        self._link: Link | None = None

    @property
    def memory(self) -> str:
        """The memory mechanism: ``"invert"``, ``"checkpoint"`` or ``"store"``."""
        return self._memory

    @memory.setter
    def memory(self, value: str) -> None:
        self._memory = check_option("memory", value, MEMORY_MODES)

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, index: int) -> nn.Module:
        return self.blocks[index]

    def extra_repr(self) -> str:
        return f"memory={self.memory!r}"

    def forward(self, x: Tensor, *context: object) -> Tensor:
        _check_context(x, context)
        if not torch.is_grad_enabled():  # no graph: each block may reuse the one before's output
            return self._forward_owned(x, context, owned=False)
        if self.memory == "store" or not _needs_graph(self, x, context):
            for block in self.blocks:
                x = forward_block(block, x, context)
            return x
        if self.memory == "checkpoint":
            for block in self.blocks:
                x = checkpoint(block, x, *context, use_reentrant=False)
            return x
        return self._invert(x, context)

    #: without a graph, :meth:`forward_in_place` may overwrite its input
    forwards_in_place = True

    @property
    def retains_output(self) -> bool:
        """Whether the last block keeps the output (e.g. a tap): the engine must not reuse it."""
        return bool(self.blocks) and getattr(self.blocks[-1], "retains_output", False)

    def forward_in_place(self, x: Tensor, *context: object) -> Tensor:
        """Forward without a graph, free to overwrite ``x`` (nested in an ``"invert"`` chain)."""
        return self._forward_owned(x, context, owned=True)

    def _forward_owned(self, x: Tensor, context: tuple, *, owned: bool) -> Tensor:
        for block in self.blocks:
            x, owned = forward_owned(block, x, context, owned=owned)
        return x

    @contextlib.contextmanager
    def linked(
        self,
        *,
        output_slot: Slot | None = None,
        input_sink: Callable[[Tensor, bool], None] | None = None,
    ) -> Iterator[Link]:
        """Hand tensors over between this chain's ``"invert"`` backward and other layers.

        For the calls inside the block: ``output_slot``: keep no output for backward, which
        takes it from the slot (someone fills it first); ``input_sink(x, owned)``: receives
        the chain's input as backward rebuilds it (``owned``: ``x`` is the engine's own
        storage, free to overwrite). ``link.used`` tells whether a call inverted the chain
        (in other modes, and without a graph, nothing is handed over).
        """
        link = Link(output_slot, input_sink)
        self._link = link
        try:
            yield link
        finally:
            self._link = None

    @torch.compiler.disable
    def _invert(self, x: Tensor, context: tuple) -> Tensor:
        # torch.compile graph-breaks here: the engine's backward drives autograd itself,
        # which the compiler cannot trace faithfully. The blocks still run eagerly and exactly.
        sources = _sources(self, context)
        measure = self.drift_tol is not None and self._backwards % self.drift_every == 0
        self._backwards += 1
        anchors = self._anchor_indices(measure)
        link = self._link or Link()
        link.used = True
        run = ChainRun(
            self, self.blocks, context, sources, anchors, measure_drift=measure,
            consume_output=self.consume_output, output_slot=link.output_slot,
            input_sink=link.input_sink,
        )  # fmt: skip
        return InvertFunction.apply(run, x, *sources)

    def inverse(self, y: Tensor, *context: object) -> Tensor:
        """Invert the whole chain: ``chain.inverse(chain(x)) == x`` up to rounding."""
        _check_context(y, context)
        for block in reversed(self.blocks):
            y = block.inverse(y, *context)
        return y

    #: nested in another chain, :meth:`reverse` may overwrite its arguments (``in_place``)
    reverses_in_place = True

    def reverse(
        self, y: Tensor, grad_y: Tensor, tape: Tape, *, in_place: bool = False
    ) -> tuple[Tensor, Tensor]:
        """Engine hook: a chain nested in another chain reverses its blocks in turn."""
        return self._reverse(y, grad_y, tape, need_input=True, owned=in_place)

    def reverse_gradient(
        self, y: Tensor, grad_y: Tensor, tape: Tape, *, in_place: bool = False
    ) -> Tensor:
        """Engine hook: :meth:`reverse` when nobody reads the rebuilt input (see
        :func:`~invseg.engine.reverse_block`); the first block is told so too."""
        return self._reverse(y, grad_y, tape, need_input=False, owned=in_place)[1]

    def _reverse(
        self, y: Tensor, grad_y: Tensor, tape: Tape, *, need_input: bool, owned: bool
    ) -> tuple[Tensor | None, Tensor]:
        for i in reversed(range(len(self.blocks))):
            y, grad_y, owned = reverse_owned(
                self.blocks[i], y, grad_y, tape, owned=owned, need_input=need_input or i > 0
            )
        return y, grad_y

    def _anchor_indices(self, measure: bool) -> frozenset[int]:
        if self.anchor_every is not None:
            return frozenset(range(0, len(self.blocks), self.anchor_every))
        return frozenset({0}) if measure else frozenset()

    def _after_backward(self, errors: dict[int, float]) -> None:
        if self.drift_tol is None or not errors:
            return
        self.inverse_errors = errors
        bad = {i: e for i, e in errors.items() if not e <= self.drift_tol}
        if not bad:
            return
        worst = max(bad, key=bad.get)
        action = "switching this chain to memory='checkpoint'"
        if self.on_drift != "checkpoint":
            action = "gradients used the kept input; set anchor_every or on_drift='checkpoint'"
        warnings.warn(
            f"inverse drift {bad[worst]:.2e} at block {worst} exceeds drift_tol="
            f"{self.drift_tol:.1e}; {action}.",
            InverseDriftWarning,
            stacklevel=2,
        )
        if self.on_drift == "checkpoint":
            self.memory = "checkpoint"


@dataclass
class Link:
    """What :meth:`InvertibleSequential.linked` hands over, and whether a call did."""

    output_slot: Slot | None = None
    input_sink: Callable[[Tensor, bool], None] | None = None
    used: bool = False


def _needs_graph(module: nn.Module, x: Tensor, context: tuple) -> bool:
    if not torch.is_grad_enabled():
        return False
    return (
        x.requires_grad
        or any(p.requires_grad for p in module.parameters())
        or any(isinstance(c, Tensor) and c.requires_grad for c in context)
    )


def _sources(module: nn.Module, context: tuple) -> list[Tensor]:
    """Parameters and grad-requiring context tensors, each once (shared weights included)."""
    unique: dict[int, Tensor] = {}
    for p in module.parameters():
        if p.requires_grad:
            unique.setdefault(id(p), p)
    for c in context:
        if isinstance(c, Tensor) and c.requires_grad:
            unique.setdefault(id(c), c)
    return list(unique.values())


def _check_context(x: Tensor, context: tuple) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"the chain input must be a Tensor, got {type(x).__name__}.")
    for i, c in enumerate(context):
        if (
            isinstance(c, Tensor)
            and c.ndim > 0
            and x.ndim > 0
            and c.shape[0] not in (1, x.shape[0])
        ):
            raise ValueError(
                f"context tensor {i} has batch size {c.shape[0]} but the input has batch size "
                f"{x.shape[0]}; context must share the batch dimension (or have size 1)."
            )


class Inverted(nn.Module):
    """Swap a block's directions: ``forward`` is ``block.inverse`` and ``inverse`` is ``block``.

    Turns an invertible down-sampling into the matching up-sampling.

    Args:
        block: an invertible module.

    Example:
        >>> import torch
        >>> from invseg.engine import Squeeze3d
        >>> up = Inverted(Squeeze3d())
        >>> up(torch.zeros(1, 8, 2, 2, 2)).shape
        torch.Size([1, 1, 4, 4, 4])
    """

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = check_block(block, 0)

    def forward(self, x: Tensor, *context: object) -> Tensor:
        return self.block.inverse(x, *context)

    def inverse(self, y: Tensor, *context: object) -> Tensor:
        return self.block(y, *context)


def set_memory(module: nn.Module, memory: str) -> nn.Module:
    """Set ``memory`` on every :class:`InvertibleSequential` inside ``module`` (in place).

    Example:
        >>> from invseg.engine import AdditiveCoupling
        >>> net = torch.nn.Sequential(InvertibleSequential(AdditiveCoupling(torch.nn.Identity())))
        >>> set_memory(net, "store")[0].memory
        'store'
    """
    check_option("memory", memory, MEMORY_MODES)
    for m in module.modules():
        if isinstance(m, InvertibleSequential):
            m.memory = memory
    return module
