from __future__ import annotations

import re

import pytest
import torch
from monai.networks.utils import pixelunshuffle

from invseg.engine import (
    AdditiveCoupling,
    InvertibleDownsample3d,
    InvertibleSequential,
    InvertibleUpsample3d,
    OrthogonalMix,
    Squeeze3d,
    squeeze3d,
    unsqueeze3d,
)
from invseg.engine.resample import haar_matrix3d
from invseg.engine.stride import channel_factor, check_stride
from invseg.engine.testing import gradient_parity

from .conftest import residual


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


# ---- per-axis strides (nnU-Net plans such as [1, 2, 2]) ----

STRIDES = [(2, 2, 2), (1, 2, 2), (2, 1, 2), (1, 1, 2)]
HINT = "stride must be 2 or a per-axis (D, H, W) tuple of 1s and 2s such as (1, 2, 2), got"
F64 = torch.float64


def _perturbed(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` in float64 with every parameter moved away from its (Haar) start."""
    module = module.double()
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.3)
    return module


@pytest.mark.parametrize(
    ("stride", "factor"), [((2, 2, 2), 8), (2, 8), ([1, 2, 2], 4), ((2, 1, 2), 4), ((1, 1, 2), 2)]
)
def test_check_stride_normalises_and_counts_channels(stride, factor: int) -> None:
    axes = check_stride(stride)
    assert isinstance(axes, tuple) and axes == ((2, 2, 2) if stride == 2 else tuple(stride))
    assert channel_factor(stride) == factor


@pytest.mark.parametrize("stride", STRIDES)
def test_strided_squeeze_follows_documented_channel_order(stride) -> None:
    sd, sh, sw = stride
    f = sd * sh * sw
    x = torch.randn(2, 3, 4, 6, 8)
    y = squeeze3d(x, stride)
    assert y.shape == (2, 3 * f, 4 // sd, 6 // sh, 8 // sw)
    n, c, i, j, k, d, h, w = torch.meshgrid(
        *[torch.arange(n) for n in (2, 3, sd, sh, sw, 4 // sd, 6 // sh, 8 // sw)], indexing="ij"
    )
    # y[f c + (i s_h + j) s_w + k, d, h, w] = x[c, s_d d + i, s_h h + j, s_w w + k]
    assert torch.equal(
        y[n, f * c + (i * sh + j) * sw + k, d, h, w],
        x[n, c, sd * d + i, sh * h + j, sw * w + k],
    )


def test_squeeze_1_2_2_matches_hand_written_reshape() -> None:
    x = torch.arange(2 * 3 * 4 * 6, dtype=F64).reshape(1, 2, 3, 4, 6)  # odd D is fine: unstrided
    # fold (H, W) only: (B, C, D, H/2, 2, W/2, 2) -> (B, C, 2, 2, D, H/2, W/2)
    ref = x.reshape(1, 2, 3, 2, 2, 3, 2).permute(0, 1, 4, 6, 2, 3, 5).reshape(1, 8, 3, 2, 3)
    y = squeeze3d(x, (1, 2, 2))
    assert torch.equal(y, ref)
    assert y[0, :4, 0, 0, 0].tolist() == [0.0, 1.0, 6.0, 7.0]  # one 2x2 in-plane block
    assert y[0, 4:, 2, 1, 2].tolist() == [
        x[0, 1, 2, 2 + a, 4 + b].item() for a in (0, 1) for b in (0, 1)
    ]
    assert torch.equal(unsqueeze3d(y, (1, 2, 2)), x)


def test_stride_2_and_2_2_2_are_todays_behaviour_bit_for_bit() -> None:
    x = torch.randn(2, 3, 4, 6, 8)
    assert torch.equal(squeeze3d(x, (2, 2, 2)), squeeze3d(x))
    assert torch.equal(squeeze3d(x, 2), pixelunshuffle(x, 3, 2))
    default = _perturbed(InvertibleDownsample3d(3))
    explicit = InvertibleDownsample3d(3, stride=(2, 2, 2)).double()
    explicit.load_state_dict(default.state_dict())
    assert torch.equal(explicit(x.double()), default(x.double()))
    assert torch.equal(haar_matrix3d(F64, stride=(2, 2, 2)), haar_matrix3d(F64))


@pytest.mark.parametrize("stride", STRIDES)
def test_strided_resampling_round_trip_and_shapes_in_float64(stride) -> None:
    sd, sh, sw = stride
    f = sd * sh * sw
    x = torch.randn(2, 3, 4, 6, 8, dtype=F64)
    small = (2, 3 * f, 4 // sd, 6 // sh, 8 // sw)
    squeeze = Squeeze3d(stride)
    assert squeeze(x).shape == small and torch.equal(squeeze.inverse(squeeze(x)), x)
    down = _perturbed(InvertibleDownsample3d(3, stride=stride))
    assert down.blocks[1].skew.shape == (3 * f, 3 * f) and down.stride == stride
    with torch.no_grad():
        y = down(x)
        assert y.shape == small
        torch.testing.assert_close(down.inverse(y), x, rtol=0, atol=1e-12)
    up = _perturbed(InvertibleUpsample3d(3 * f, stride=stride))
    with torch.no_grad():
        z = up(y)
        assert z.shape == x.shape and up.in_channels == 3 * f
        torch.testing.assert_close(up.inverse(z), y, rtol=0, atol=1e-12)


@pytest.mark.parametrize("stride", STRIDES[1:])
def test_haar_init_with_stride_is_a_wavelet_on_the_strided_axes(stride) -> None:
    f = channel_factor(stride)
    haar = haar_matrix3d(F64, stride=stride)
    torch.testing.assert_close(haar @ haar.T, torch.eye(f, dtype=F64), rtol=0, atol=1e-15)
    x = torch.randn(1, 2, 4, 4, 4, dtype=F64)
    y = InvertibleDownsample3d(2, stride=stride).double()(x)
    low = torch.nn.functional.avg_pool3d(x, stride) * f**0.5  # low-pass band of each channel
    torch.testing.assert_close(y[:, ::f], low)


@pytest.mark.parametrize("stride", STRIDES[1:])
def test_invert_mode_gradients_match_store_with_strided_downsampling(stride) -> None:
    f = channel_factor(stride)
    chain = InvertibleSequential(
        AdditiveCoupling(residual(1)),
        InvertibleDownsample3d(2, stride=stride),
        AdditiveCoupling(residual(f)),
        InvertibleUpsample3d(2 * f, stride=stride),
    )
    chain = _perturbed(chain)
    x = torch.randn(2, 2, 4, 6, 8, dtype=F64, requires_grad=True)
    errors = gradient_parity(chain, x, loss=lambda y: (y.sin() * y).sum())
    assert len(errors) == len(list(chain.parameters())) + 1  # every parameter and the input
    assert max(errors.values()) < 1e-10


@pytest.mark.parametrize("stride", STRIDES)
def test_fused_reverse_of_strided_blocks_matches_autograd(stride) -> None:
    f = channel_factor(stride)
    _fused_vs_autograd(Squeeze3d(stride), torch.randn(2, 3, 4, 6, 8))
    _fused_vs_autograd(
        OrthogonalMix(2 * f, init="haar", stride=stride), torch.randn(1, 2 * f, 2, 3, 4)
    )
    up = _perturbed(InvertibleUpsample3d(2 * f, stride=stride))
    _fused_vs_autograd(up, torch.randn(1, 2 * f, 2, 3, 4))


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (
            lambda: squeeze3d(torch.zeros(1, 1, 4, 4, 4), 0),
            HINT + " 0.",
        ),
        (
            lambda: Squeeze3d(3),
            HINT + " 3; chain several down-samplings",
        ),
        (
            lambda: InvertibleDownsample3d(2, stride=-2),
            HINT + " -2.",
        ),
        (lambda: InvertibleDownsample3d(2, stride=(1, 2, 4)), "got (1, 2, 4); chain several"),
        (
            lambda: InvertibleDownsample3d(2, stride=(1, 2)),
            "stride needs one entry per spatial axis (D, H, W), got (1, 2) with 2",
        ),
        (lambda: InvertibleUpsample3d(16, stride=[2, 2, 2, 2]), "got [2, 2, 2, 2] with 4"),
        (
            lambda: InvertibleDownsample3d(2, stride=(1, 1, 1)),
            "stride=(1, 1, 1) folds no axis into channels",
        ),
        (lambda: Squeeze3d(1), "stride=1 folds no axis into channels"),
        (lambda: check_stride([1, 0, 2], name="plans strides[1]"), "plans strides[1] must be 2 or"),
        (
            lambda: squeeze3d(torch.zeros(1, 1, 4, 5, 4), (1, 2, 2)),
            "squeeze3d needs spatial sizes divisible by stride=(1, 2, 2), got (4, 5, 4)",
        ),
        (
            lambda: InvertibleDownsample3d(1, stride=(2, 1, 2))(torch.zeros(1, 1, 3, 4, 4)),
            "divisible by stride=(2, 1, 2), got (3, 4, 4)",
        ),
        (
            lambda: unsqueeze3d(torch.zeros(1, 6, 2, 2, 2), (1, 2, 2)),
            "channels divisible by 4 for stride=(1, 2, 2), got (1, 6, 2, 2, 2)",
        ),
        (
            lambda: InvertibleUpsample3d(6, stride=(1, 2, 2)),
            "in_channels divisible by 4 (the channel factor of stride=(1, 2, 2)), got 6",
        ),
        (
            lambda: OrthogonalMix(6, init="haar", stride=(2, 1, 2)),
            "channels divisible by 4 (the channel factor of stride=(2, 1, 2)), got 6",
        ),
    ],
)
def test_bad_strides_raise_value_error_naming_the_value(factory, match: str) -> None:
    with pytest.raises(ValueError, match=re.escape(match)):
        factory()


@pytest.mark.parametrize("stride", ["2", 2.0, (1, 2.0, 2), True, None])
def test_non_integer_strides_raise_type_error(stride) -> None:
    with pytest.raises(TypeError, match=re.escape(HINT[:-5])):
        check_stride(stride)
