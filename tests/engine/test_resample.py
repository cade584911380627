from __future__ import annotations

import pytest
import torch
from monai.networks.utils import pixelunshuffle

from invseg.engine import (
    InvertibleDownsample3d,
    InvertibleSequential,
    InvertibleUpsample3d,
    OrthogonalMix,
    Squeeze3d,
    squeeze3d,
    unsqueeze3d,
)
from invseg.engine.resample import haar_matrix3d
from invseg.engine.testing import gradient_parity


def test_squeeze_matches_monai_pixelunshuffle_channel_order() -> None:
    x = torch.randn(2, 3, 4, 6, 8)
    torch.testing.assert_close(squeeze3d(x), pixelunshuffle(x, 3, 2), rtol=0, atol=0)


def test_squeeze_channel_order_is_documented_order() -> None:
    x = torch.randn(1, 2, 4, 4, 4)
    y = squeeze3d(x)
    c, i, j, k, d, h, w = 1, 1, 0, 1, 1, 0, 1
    assert y[0, 8 * c + 4 * i + 2 * j + k, d, h, w] == x[0, c, 2 * d + i, 2 * h + j, 2 * w + k]


def test_squeeze_round_trip_is_exact() -> None:
    x = torch.randn(2, 3, 4, 6, 8)
    assert torch.equal(unsqueeze3d(squeeze3d(x)), x)


@pytest.mark.parametrize("shape", [(1, 1, 3, 4, 4), (1, 1, 4, 5, 4), (1, 1, 4, 4)])
def test_squeeze_rejects_odd_or_non_3d_inputs(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="squeeze3d"):
        squeeze3d(torch.randn(*shape))


@pytest.mark.parametrize("init", ["identity", "haar"])
def test_orthogonal_mix_stays_orthogonal_after_updates(init: str) -> None:
    mix = OrthogonalMix(16, init=init).double()
    with torch.no_grad():
        mix.skew.normal_(0, 1.0)
    w = mix.weight()
    torch.testing.assert_close(w @ w.T, torch.eye(16, dtype=torch.float64), rtol=0, atol=1e-12)


def test_haar_init_makes_downsampling_a_wavelet_transform() -> None:
    x = torch.randn(1, 1, 4, 4, 4, dtype=torch.float64)
    y = InvertibleDownsample3d(1).double()(x)
    # channel 0 is the low-pass band: the 2x2x2 block mean scaled by sqrt(8)
    mean = torch.nn.functional.avg_pool3d(x, 2)
    torch.testing.assert_close(y[:, :1], mean * 8**0.5)
    torch.testing.assert_close(
        haar_matrix3d(torch.float64) @ haar_matrix3d(torch.float64).T,
        torch.eye(8, dtype=torch.float64),
    )


def test_upsample_inverts_downsample_and_learns() -> None:
    chain = InvertibleSequential(InvertibleDownsample3d(2), InvertibleUpsample3d(16)).double()
    with torch.no_grad():
        for p in chain.parameters():
            p.normal_(0, 0.3)
    x = torch.randn(2, 2, 4, 6, 4, dtype=torch.float64, requires_grad=True)
    errors = gradient_parity(chain, x, loss=lambda y: (y.sin() * y).sum())
    assert len(errors) == 3 and max(errors.values()) < 1e-10


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: OrthogonalMix(12, init="haar"), "divisible by 8"),
        (lambda: OrthogonalMix(8, init="haarr"), "Did you mean 'haar'"),
        (lambda: InvertibleUpsample3d(12), "divisible by 8"),
    ],
)
def test_bad_resampling_arguments(factory, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        factory()


def _fused_vs_autograd(block, x):
    """Input and gradients from the block's fused ``reverse`` against plain autograd."""
    from invseg.engine import Tape

    x = x.double()
    block = block.double()
    if isinstance(block, OrthogonalMix):
        with torch.no_grad():
            block.skew.add_(0.1 * torch.randn_like(block.skew))
    leaf = x.clone().requires_grad_()
    y = block(leaf)
    grad_y = torch.randn_like(y)
    params = list(block.parameters())
    ref = torch.autograd.grad(y, [leaf, *params], grad_y)
    tape = Tape(params, ())
    x_back, grad_x = block.reverse(y.detach(), grad_y, tape)
    torch.testing.assert_close(x_back, x)
    torch.testing.assert_close(grad_x, ref[0])
    for got, want in zip(tape.grads, ref[1:]):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize(
    "make",
    [
        lambda: OrthogonalMix(16, init="haar"),
        lambda: OrthogonalMix(6),
        lambda: Squeeze3d(),
    ],
)
def test_fused_reverse_of_resampling_blocks_matches_autograd(make):
    torch.manual_seed(0)
    block = make()
    c = 2 if isinstance(block, Squeeze3d) else block.skew.shape[0]
    _fused_vs_autograd(block, torch.randn(2, c, 4, 4, 4))


def test_fused_reverse_of_up_and_down_sampling_matches_autograd():
    from invseg.engine import Tape

    torch.manual_seed(0)
    up = InvertibleUpsample3d(16).double()
    with torch.no_grad():
        up.block.blocks[1].skew.normal_(0, 0.1)
    x = torch.randn(1, 16, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    y = up(x)
    grad_y = torch.randn_like(y)
    params = list(up.parameters())
    ref = torch.autograd.grad(y, [x, *params], grad_y)
    tape = Tape(params, ())
    x_back, grad_x = up.reverse(y.detach(), grad_y, tape)
    torch.testing.assert_close(x_back, x.detach())
    torch.testing.assert_close(grad_x, ref[0])
    torch.testing.assert_close(tape.grads[0], ref[1])


def test_cached_weight_follows_parameter_updates():
    mix = OrthogonalMix(8)
    with torch.no_grad():
        before = mix.weight().clone()
        mix.skew.add_(torch.randn(8, 8))  # in-place update bumps the version: stale cache
        assert not torch.allclose(mix.weight(), before)
        assert mix.weight() is mix.weight()  # unchanged parameter: one solve
    assert mix.weight().requires_grad  # with grad: never the cached tensor


def test_mix_reverse_closed_form_gradient_under_autocast_and_frozen():
    """The Cayley VJP in closed form matches autograd under bf16 autocast, keeps the forward's
    cached matrix, and adds nothing for a frozen mix."""
    from invseg.engine import Tape

    torch.manual_seed(0)
    mix = OrthogonalMix(16, init="haar")
    with torch.no_grad():
        mix.skew.normal_(0, 0.1)
    x = torch.randn(1, 16, 4, 4, 4)
    grad_y = torch.randn_like(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = mix(x)
        (ref,) = torch.autograd.grad(y, [mix.skew], grad_y)
        with torch.no_grad():
            y = mix(x)  # caches the matrix the engine's forward would use
            cached = mix.weight()
        tape = Tape([mix.skew], ())
        mix.reverse(y, grad_y, tape)
        with torch.no_grad():
            assert mix.weight() is cached
    torch.testing.assert_close(tape.grads[0], ref, rtol=0.05, atol=0.05 * ref.abs().max().item())
    mix.skew.requires_grad_(False)
    frozen = Tape([], ())
    mix.reverse(y.float(), grad_y, frozen)
    assert frozen.grads == []
