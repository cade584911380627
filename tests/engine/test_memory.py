from __future__ import annotations

import torch
from torch import nn

from invseg.engine import activation_bytes

from .conftest import make_chain

X_SHAPE = (1, 4, 12, 12, 12)
OUTPUT_BYTES = 4 * 12**3 * 4


def _step_bytes(chain: nn.Module) -> int:
    x = torch.randn(*X_SHAPE)
    return activation_bytes(lambda: chain(x).sum())


def test_counts_each_storage_once_and_skips_parameters() -> None:
    x = torch.randn(100, requires_grad=True)
    w = nn.Parameter(torch.randn(100))
    # exp saves its output (400 B); mul saves both operands: w (a parameter, skipped) and
    # e (the same storage as exp's output, counted once).
    assert activation_bytes(lambda: (x.exp() * w).sum()) == 400


def test_invert_chain_holds_only_its_output() -> None:
    assert _step_bytes(make_chain(4)) == OUTPUT_BYTES


def test_invert_memory_is_independent_of_depth() -> None:
    shallow, deep = _step_bytes(make_chain(4)), _step_bytes(make_chain(64))
    assert deep <= 1.05 * shallow


def test_invert_is_below_a_tenth_of_store_at_depth_16() -> None:
    invert = _step_bytes(make_chain(16))
    store = _step_bytes(make_chain(16, memory="store"))
    assert invert < 0.1 * store


def test_checkpoint_keeps_one_input_per_block() -> None:
    assert _step_bytes(make_chain(8, memory="checkpoint")) == 8 * OUTPUT_BYTES
