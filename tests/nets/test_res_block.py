from __future__ import annotations

import pytest
import torch

from invseg.engine import InvertibleSequential
from invseg.engine.testing import assert_round_trip, gradients, relative_error
from invseg.nets import InvertibleResBlock, ResidualBlock


@pytest.mark.parametrize("channels", [3, 7, 1])
def test_odd_channels_raise_a_clear_error(channels: int) -> None:
    with pytest.raises(ValueError, match="even"):
        InvertibleResBlock(channels)


def test_round_trip_is_exact_in_float64() -> None:
    block = InvertibleResBlock(8, norm="instance", dropout=0.0).double()
    assert_round_trip(block, torch.randn(2, 8, 6, 5, 7, dtype=torch.float64))


def test_f_and_g_are_norm_act_conv_on_half_the_channels() -> None:
    block = InvertibleResBlock(12, norm=("group", {"num_groups": 4}))
    for fn in (block.f, block.g):
        norm, act, conv = fn
        assert norm.num_channels == 6 and norm.num_groups == 2  # gcd(4, 6)
        assert isinstance(act, torch.nn.LeakyReLU)
        assert (conv.in_channels, conv.out_channels, conv.kernel_size) == (6, 6, (3, 3, 3))


def test_dropout_gradients_match_plain_autograd_in_invert_mode() -> None:
    blocks = [InvertibleResBlock(4, dropout=0.3).double() for _ in range(2)]
    x = torch.randn(1, 4, 5, 5, 5, dtype=torch.float64, requires_grad=True)
    grads = {}
    for memory in ("invert", "store"):
        chain = InvertibleSequential(*blocks, memory=memory).train()
        torch.manual_seed(3)
        grads[memory] = gradients(chain, [x])
    assert grads["invert"].keys() == grads["store"].keys()
    for name, ref in grads["store"].items():
        assert relative_error(grads["invert"][name], ref) < 1e-10, name


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"act": "leakyrelux"}, "LEAKYRELU"),
        ({"norm": "gruop"}, "GROUP"),
        ({"kernel_size": 2}, "odd"),
    ],
)
def test_bad_options_say_what_to_do(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        InvertibleResBlock(4, **kwargs)


def test_plain_residual_block_keeps_shape_and_is_residual() -> None:
    block = ResidualBlock(4)
    torch.nn.init.zeros_(block.g[-1].weight)
    torch.nn.init.zeros_(block.g[-1].bias)
    x = torch.randn(2, 4, 3, 4, 5)
    torch.testing.assert_close(block(x), x)
