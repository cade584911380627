from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from invseg.engine import (
    AdditiveCoupling,
    AffineCoupling,
    Inverted,
    InvertibleDownsample3d,
    InvertibleSequential,
    InvertibleUpsample3d,
    OrthogonalMix,
    Squeeze3d,
    Tape,
    import_memcnn,
)
from invseg.engine.testing import assert_round_trip, gradients

from .conftest import make_chain, residual

F64 = torch.float64


def _randomise(module: nn.Module) -> nn.Module:
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.2)
    return module


BLOCKS = {
    "additive": lambda: AdditiveCoupling(residual(2)),
    "affine": lambda: AffineCoupling(nn.Conv3d(2, 4, 3, padding=1)),
    "squeeze": Squeeze3d,
    "orthogonal_mix": lambda: _randomise(OrthogonalMix(4)),
    "orthogonal_mix_haar": lambda: _randomise(OrthogonalMix(8, init="haar")),
    "downsample": lambda: _randomise(InvertibleDownsample3d(4)),
    "upsample": lambda: _randomise(InvertibleUpsample3d(8)),
    "inverted_coupling": lambda: Inverted(AdditiveCoupling(residual(2))),
    "chain": lambda: make_chain(3),
}


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_round_trip_in_float64(name: str) -> None:
    block = BLOCKS[name]().to(F64)
    x = torch.randn(2, 4 if name != "upsample" else 8, 4, 6, 8, dtype=F64)
    if name == "orthogonal_mix_haar":
        x = torch.randn(2, 8, 4, 6, 8, dtype=F64)
    assert_round_trip(block, x, rtol=1e-12, atol=1e-12)


def test_additive_coupling_matches_memcnn_with_same_weights() -> None:
    memcnn = import_memcnn()
    theirs = memcnn.AdditiveCoupling(residual(2)).to(F64)
    ours = AdditiveCoupling(copy.deepcopy(theirs.Fm), copy.deepcopy(theirs.Gm)).to(F64)
    x = torch.randn(2, 4, 6, 6, 6, dtype=F64)
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=0)
    torch.testing.assert_close(ours.inverse(x), theirs.inverse(x), rtol=1e-14, atol=1e-14)


def test_affine_coupling_matches_memcnn_sigmoid_adapter() -> None:
    memcnn = import_memcnn()
    f, g = nn.Conv3d(2, 4, 3, padding=1), nn.Conv3d(2, 4, 3, padding=1)
    theirs = memcnn.AffineCoupling(f, g, adapter=memcnn.AffineAdapterSigmoid).to(F64)
    ours = AffineCoupling(copy.deepcopy(f), copy.deepcopy(g)).to(F64)
    x = torch.randn(2, 4, 6, 6, 6, dtype=F64)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-14, atol=1e-14)


def test_odd_channels_raise_a_clear_error() -> None:
    with pytest.raises(ValueError, match="odd size 3"):
        AdditiveCoupling(nn.Identity())(torch.randn(1, 3, 4, 4, 4))


def test_non_module_residual_function_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="nn.Modules"):
        AdditiveCoupling(lambda t: t)  # type: ignore[arg-type]


class _Counting(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.inner(x)


@pytest.mark.parametrize(("memory", "calls"), [("invert", 2), ("checkpoint", 2), ("store", 1)])
def test_each_residual_function_runs_once_in_backward(memory: str, calls: int) -> None:
    """RevNet single pass: one no-grad forward plus one graded evaluation per step."""
    blocks = [AdditiveCoupling(_Counting(residual(2)), _Counting(residual(2))) for _ in range(3)]
    chain = InvertibleSequential(*blocks, memory=memory)
    x = torch.randn(1, 4, 6, 6, 6, requires_grad=True)
    chain(x).square().sum().backward()
    assert [(b.f.calls, b.g.calls) for b in blocks] == [(calls, calls)] * 3


@pytest.mark.filterwarnings("ignore:TypedStorage is deprecated")  # inside memcnn
def test_memcnn_wrapper_evaluates_each_function_three_times() -> None:
    """The baseline we beat: memcnn inverts, then recomputes forward with grad."""
    memcnn = import_memcnn()
    f, g = _Counting(residual(2)), _Counting(residual(2))
    block = memcnn.InvertibleModuleWrapper(memcnn.AdditiveCoupling(f, g), keep_input=False)
    x = torch.randn(1, 4, 6, 6, 6, requires_grad=True) * 1.0  # memcnn frees its input
    block(x).square().sum().backward()
    assert (f.calls, g.calls) == (3, 3)


def _grads_match_store(chain: InvertibleSequential, x: torch.Tensor, seed: int = 0) -> None:
    ref = copy.deepcopy(chain)
    ref.memory = "store"
    grads = []
    for net in (chain, ref):
        torch.manual_seed(seed)  # the same dropout masks in both
        grads.append(gradients(net, [x.detach().requires_grad_()]))
    for name, b in grads[1].items():
        torch.testing.assert_close(grads[0][name], b, rtol=1e-10, atol=1e-12)


def _conv_counts(chain: InvertibleSequential) -> list[tuple[int, int]]:
    counts = [[0, 0] for _ in chain.blocks]
    for i, block in enumerate(chain.blocks):
        for j, fn in enumerate((block.f, block.g)):
            fn[-1].register_forward_hook(lambda *_, c=counts[i], j=j: c.__setitem__(j, c[j] + 1))
    return counts


def test_first_block_never_evaluates_the_conv_only_its_rebuilt_input_needs() -> None:
    """Nobody reads a chain's rebuilt input, so F's last conv of block 0 is not recomputed."""
    chain = make_chain(3).double()
    counts = _conv_counts(chain)
    x = torch.randn(1, 4, 6, 6, 6, dtype=F64, requires_grad=True)
    chain(x).square().sum().backward()
    assert counts == [[1, 2], [2, 2], [2, 2]]  # (F conv, G conv) runs: forward + recompute
    _grads_match_store(chain, x)


LAST_LAYERS = {
    "conv3d": lambda: nn.Conv3d(2, 2, 3, padding=1),
    "no_bias_dilated_grouped": lambda: nn.Conv3d(
        2, 2, 3, padding=2, dilation=2, groups=2, bias=False
    ),
    "pointwise": lambda: nn.Conv3d(2, 2, 1),
    "padding_same_falls_back": lambda: nn.Conv3d(2, 2, 3, padding="same"),
    "not_a_conv_falls_back": lambda: nn.Tanh(),
}


@pytest.mark.parametrize("name", sorted(LAST_LAYERS))
@pytest.mark.parametrize("frozen", [False, True])
def test_reverse_gradient_equals_the_gradient_of_reverse(name: str, frozen: bool) -> None:
    f = nn.Sequential(nn.GroupNorm(1, 2), nn.LeakyReLU(0.1), LAST_LAYERS[name]())
    block = _randomise(AdditiveCoupling(f)).double()
    if frozen:
        f[-1].requires_grad_(False)
    y = torch.randn(2, 4, 5, 5, 5, dtype=F64)
    grad_y = torch.randn_like(y)

    def run(method) -> tuple[torch.Tensor, list]:
        tape = Tape([p for p in block.parameters() if p.requires_grad], ())
        out = method(y, grad_y, tape)
        return (out[1] if isinstance(out, tuple) else out), tape.grads

    grad_x, grads = run(block.reverse)
    grad_x_skip, grads_skip = run(block.reverse_gradient)
    torch.testing.assert_close(grad_x_skip, grad_x, rtol=1e-12, atol=1e-12)
    assert all(g is not None for g in grads_skip)
    for a, b in zip(grads_skip, grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_reverse_gradient_of_a_2d_coupling_matches_under_bfloat16_autocast() -> None:
    f = nn.Sequential(nn.GroupNorm(1, 2), nn.LeakyReLU(0.1), nn.Conv2d(2, 2, 3, padding=1))
    block = _randomise(AdditiveCoupling(f))
    y = torch.randn(1, 4, 8, 8)
    grad_y = torch.randn_like(y)
    results = []
    for method in (block.reverse, block.reverse_gradient):
        tape = Tape(list(block.parameters()), ())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = method(y, grad_y, tape)
        results.append(((out[1] if isinstance(out, tuple) else out), tape.grads))
    (gx, grads), (gx_skip, grads_skip) = results
    assert gx_skip.dtype == gx.dtype == torch.float32
    torch.testing.assert_close(gx_skip, gx, rtol=2e-2, atol=2e-2)
    for a, b in zip(grads_skip, grads):
        assert a.dtype == b.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=2e-2, atol=5e-2)


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_couplings_anchored_at_every_block_evaluate_no_conv_in_backward(dropout: float) -> None:
    """Input kept and output known: only the norm/activation prefixes are recomputed."""
    chain = make_chain(3, anchor_every=1, dropout=dropout).double()
    counts = _conv_counts(chain)
    x = torch.randn(1, 4, 6, 6, 6, dtype=F64)
    chain(x.requires_grad_()).square().sum().backward()
    assert counts == [[1, 1]] * 3  # the forward only
    _grads_match_store(chain, x)


def test_an_anchored_block_with_a_rebuilt_output_is_recomputed_from_its_input() -> None:
    """Drift must not reach an anchored block: its rebuilt output is not used."""
    chain = make_chain(4, anchor_every=2).double()
    counts = _conv_counts(chain)
    x = torch.randn(1, 4, 6, 6, 6, dtype=F64)
    chain(x.requires_grad_()).square().sum().backward()
    assert counts == [[2, 2]] * 4
    _grads_match_store(chain, x)


def test_float64_couplings_stay_in_float64_under_autocast() -> None:
    """Autocast leaves float64 alone; so does the conv VJP of the first block."""
    chain = make_chain(2).double()
    x = torch.randn(1, 4, 6, 6, 6, dtype=F64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _grads_match_store(chain, x)
