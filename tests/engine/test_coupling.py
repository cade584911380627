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
    import_memcnn,
)
from invseg.engine.testing import assert_round_trip

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
