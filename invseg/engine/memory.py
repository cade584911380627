"""Exact accounting of the memory a call holds for backward: the one saved-bytes primitive.

:func:`saved_storages` records, while it is open, every storage autograd saves for backward
(through :class:`torch.autograd.graph.saved_tensors_hooks`); :func:`activation_bytes` is the
total for one call. The training-step measurement of the planner
(:func:`invseg.runtime.step_memory.saved_bytes`) and the benchmarks count with them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from torch import Tensor, nn
from torch.autograd.graph import saved_tensors_hooks

__all__ = ["activation_bytes", "is_activation", "saved_storages"]


def is_activation(t: Tensor) -> bool:
    """Whether a tensor saved for backward counts as an activation.

    Parameters and other grad-requiring leaves live anyway (they are the weights); everything
    else (inputs, intermediates, outputs) is held only for backward.

    Example:
        >>> import torch
        >>> is_activation(torch.ones(1)), is_activation(nn.Parameter(torch.ones(1)))
        (True, False)
    """
    return not (isinstance(t, nn.Parameter) or (t.is_leaf and t.requires_grad))


@contextlib.contextmanager
def saved_storages() -> Iterator[dict[tuple[str, int], int]]:
    """The storages autograd saves for backward while the block runs: ``(device, address) ->
    bytes``, each storage once, activations only (:func:`is_activation`).

    The recorded storages are kept alive until the block ends, so a freed one cannot hand its
    address to a later one and be counted once for two.

    Example:
        >>> import torch
        >>> x = torch.randn(1000, requires_grad=True)
        >>> with saved_storages() as saved:
        ...     y = x.exp()  # exp saves its output
        ...     z = (y * y).sum()  # mul saves y twice: one storage
        >>> list(saved.values())
        [4000]
    """
    sizes: dict[tuple[str, int], int] = {}
    alive: list[Any] = []

    def pack(t: Tensor) -> Tensor:
        if is_activation(t):
            storage = t.untyped_storage()
            key = (str(t.device), storage.data_ptr())
            if key not in sizes:
                sizes[key] = storage.nbytes()
                alive.append(storage)
        return t

    try:
        with saved_tensors_hooks(pack, lambda t: t):
            yield sizes
    finally:
        alive.clear()


def activation_bytes(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
    """Bytes of tensors saved for backward by one call of ``fn(*args, **kwargs)``.

    Counts every tensor that autograd keeps for the backward pass (:func:`saved_storages`),
    each underlying storage once. Parameters and other grad-requiring leaves are not
    activations and are not counted. Exact on CPU, so memory claims can be tested without a
    GPU.

    Args:
        fn: the computation, e.g. a model's forward or a loss closure.
        *args: positional arguments for ``fn``.
        **kwargs: keyword arguments for ``fn``.

    Returns:
        The number of bytes held for backward after the call.

    Example:
        >>> import torch
        >>> x = torch.randn(1000, requires_grad=True)
        >>> activation_bytes(lambda t: (t.exp() * 2).sum(), x)  # exp saves its output
        4000
    """
    with saved_storages() as saved:
        fn(*args, **kwargs)
    return sum(saved.values())
