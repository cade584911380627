"""Peak CUDA memory of a training step: invert below its store twin, flat in depth."""

from __future__ import annotations

import pytest
import torch

from invseg.engine import activation_bytes
from invseg.nets import FullyInvResUNet, PartiallyInvResUNet
from tests.gpu.conftest import GPU, peak_step_bytes

pytestmark = GPU

SIZE = 64
CHANNELS = (16, 32, 64, 128)
# Peak memory also holds what activation bytes do not count: the output gradient, the
# rebuilt input and the graph of the one block being back-propagated, cuDNN workspace and
# allocator rounding. The peak ratio may exceed the exact activation ratio by this much.
ALLOWANCE = 0.30
FLAT = 1.15  # peak at 8 blocks per level <= 1.15 x peak at 1 block (invert)
NETS = [PartiallyInvResUNet, FullyInvResUNet]


def _net(cls: type, memory: str, device: torch.device, blocks: int = 1):
    torch.manual_seed(0)
    return cls(3, 4, 3, channels=CHANNELS, blocks=blocks, memory=memory).to(device).train()


def _loss(model, x):
    return model(x).square().mean()


def _step(model, x):
    return lambda: _loss(model, x).backward()


@pytest.mark.parametrize("cls", NETS, ids=lambda c: c.__name__)
def test_invert_peak_is_below_store_twin_by_the_activation_ratio(cls, cuda):
    x = torch.randn(1, 4, SIZE, SIZE, SIZE, device=cuda)
    store, invert = _net(cls, "store", cuda), _net(cls, "invert", cuda)
    act_ratio = activation_bytes(_loss, invert, x) / activation_bytes(_loss, store, x)
    peak_store = peak_step_bytes(_step(store, x), store, cuda)
    peak_invert = peak_step_bytes(_step(invert, x), invert, cuda)
    ratio = peak_invert / peak_store
    assert ratio < 1.0, f"invert peak {peak_invert} >= store peak {peak_store}"
    assert ratio <= act_ratio + ALLOWANCE, (ratio, act_ratio)


@pytest.mark.parametrize("cls", NETS, ids=lambda c: c.__name__)
def test_invert_peak_is_flat_from_1_to_8_blocks_per_level(cls, cuda):
    x = torch.randn(1, 4, SIZE, SIZE, SIZE, device=cuda)
    peaks = {}
    for blocks in (1, 8):
        model = _net(cls, "invert", cuda, blocks)
        peaks[blocks] = peak_step_bytes(_step(model, x), model, cuda)
        del model
    store8 = _net(cls, "store", cuda, 8)
    peak_store8 = peak_step_bytes(_step(store8, x), store8, cuda)
    assert peaks[8] <= FLAT * peaks[1], peaks
    assert peak_store8 > 2 * peaks[8]  # the twin grows with depth, invert does not
