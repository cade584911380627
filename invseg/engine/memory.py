"""Exact accounting of the memory a call holds for backward."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn
from torch.autograd.graph import saved_tensors_hooks


def activation_bytes(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
    """Bytes of tensors saved for backward by one call of ``fn(*args, **kwargs)``.

    Counts every tensor that autograd keeps for the backward pass (via
    :class:`torch.autograd.graph.saved_tensors_hooks`), each underlying storage once.
    Parameters and other grad-requiring leaves are not activations and are not counted.
    Exact on CPU, so memory claims can be tested without a GPU.

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
    storages: dict[tuple[str, int], Any] = {}

    def pack(t: Tensor) -> Tensor:
        if isinstance(t, nn.Parameter) or (t.is_leaf and t.requires_grad):
            return t
        storage = t.untyped_storage()
        storages.setdefault((str(t.device), storage.data_ptr()), storage)
        return t

    with saved_tensors_hooks(pack, lambda t: t):
        fn(*args, **kwargs)
    return sum(s.nbytes() for s in storages.values())
