from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from torch import nn

from invseg.engine import (
    AdditiveCoupling,
    InverseDriftWarning,
    InvertibleSequential,
    import_memcnn,
)
from invseg.engine.testing import gradient_parity, gradients, set_memory

from .conftest import make_chain, residual

F64 = torch.float64


@pytest.mark.parametrize("depth", [1, 4, 16, 64])
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_gradients_match_plain_autograd(depth: int, dtype: torch.dtype, tol: float) -> None:
    chain = make_chain(depth).to(dtype)
    x = torch.randn(1, 4, 4, 4, 4, dtype=dtype, requires_grad=True)
    errors = gradient_parity(chain, x)
    assert len(errors) == 8 * depth + 1  # every parameter of F and G, and the input
    assert max(errors.values()) <= tol


@pytest.mark.parametrize("memory", ["checkpoint", "invert"])
def test_leaf_input_grad_matches_plain_autograd(memory: str) -> None:
    chain = make_chain(3).double()
    x = torch.randn(2, 4, 5, 5, 5, dtype=F64, requires_grad=True)
    ref = torch.autograd.grad(set_memory(copy.deepcopy(chain), "store")(x).sum(), x)[0]
    got = torch.autograd.grad(set_memory(chain, memory)(x).sum(), x)[0]
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)  # not doubled (memcnn bug)


def test_non_leaf_input_and_skip_reuse_get_the_right_gradient() -> None:
    """The chain input is also used as a U-Net skip: its storage must survive."""
    chain, stem = make_chain(4).double(), nn.Conv3d(4, 4, 1).double()
    x = torch.randn(1, 4, 5, 5, 5, dtype=F64)

    def net(inp: torch.Tensor) -> torch.Tensor:
        h = torch.relu_(stem(inp))  # in-place activation right before the chain
        return chain(h) * 2 + h  # skip reuse of the chain input

    grads = {}
    for mode in ("store", "invert"):
        set_memory(chain, mode)
        grads[mode] = gradients(nn.ModuleDict({"c": chain, "s": stem}), [x], forward=net)
    assert grads["store"].keys() == grads["invert"].keys()
    for k, ref in grads["store"].items():
        torch.testing.assert_close(grads["invert"][k], ref, rtol=1e-10, atol=1e-12)


class _ContextBlock(nn.Module):
    """Invertible block using a context tensor: y = x + c * tanh(w x)... made exact below."""

    def __init__(self) -> None:
        super().__init__()
        self.coupling = AdditiveCoupling(nn.Conv3d(2, 2, 3, padding=1))

    def forward(self, x: torch.Tensor, shift: torch.Tensor, scale: float) -> torch.Tensor:
        return self.coupling(x) + shift * scale

    def inverse(self, y: torch.Tensor, shift: torch.Tensor, scale: float) -> torch.Tensor:
        return self.coupling.inverse(y - shift * scale)


def test_context_tensors_pass_through_and_receive_gradients() -> None:
    chain = InvertibleSequential(*[_ContextBlock() for _ in range(3)]).double()
    x = torch.randn(2, 4, 4, 4, 4, dtype=F64, requires_grad=True)
    shift = torch.randn(2, 4, 4, 4, 4, dtype=F64, requires_grad=True)
    results = {}
    for mode in ("store", "invert"):
        set_memory(chain, mode)
        chain.zero_grad()
        xs, ss = x.detach().requires_grad_(), shift.detach().requires_grad_()
        chain(xs, ss, 0.5).square().sum().backward()
        results[mode] = (xs.grad, ss.grad, chain.blocks[0].coupling.f.weight.grad.clone())
    for got, ref in zip(results["invert"], results["store"]):
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    assert results["invert"][1].abs().sum() > 0


def test_dropout_recomputes_with_the_forward_rng_state() -> None:
    chain = make_chain(4, dropout=0.3).double()
    x = torch.randn(2, 4, 5, 5, 5, dtype=F64, requires_grad=True)
    assert max(gradient_parity(chain, x).values()) < 1e-10
    # the engine restores the global RNG: the next draw is what it would have been
    torch.manual_seed(1)
    chain(x).sum().backward()
    after_engine = torch.rand(3)
    torch.manual_seed(1)
    set_memory(chain, "store")(x).sum().backward()
    torch.testing.assert_close(after_engine, torch.rand(3))


@pytest.mark.parametrize("mode", ["no_grad", "eval", "grad"])
def test_caller_input_is_never_modified(mode: str) -> None:
    chain = make_chain(3)
    base = torch.randn(2, 8, 4, 4, 4)
    x = base[:, 2:6]  # a view into a larger tensor
    before = base.clone()
    if mode == "no_grad":
        with torch.no_grad():
            chain(x)
    elif mode == "eval":
        chain.eval()(x)
    else:
        chain(x.requires_grad_() if x.is_leaf else x).sum().backward()
    torch.testing.assert_close(base, before, rtol=0, atol=0)


def test_memcnn_couplings_work_as_blocks() -> None:
    memcnn = import_memcnn()
    chain = InvertibleSequential(
        memcnn.AdditiveCoupling(residual(2)),
        memcnn.AffineCoupling(nn.Conv3d(2, 4, 3, padding=1), adapter=memcnn.AffineAdapterSigmoid),
    ).double()
    x = torch.randn(1, 4, 4, 4, 4, dtype=F64, requires_grad=True)
    assert max(gradient_parity(chain, x).values()) < 1e-10


def test_memcnn_import_leaves_warning_filters_alone() -> None:
    before = list(warnings.filters)
    import_memcnn()
    assert warnings.filters == before


def test_batchnorm_statistics_update_once_per_step() -> None:
    def make() -> InvertibleSequential:
        torch.manual_seed(0)
        f = nn.Sequential(nn.BatchNorm3d(2), nn.Conv3d(2, 2, 3, padding=1))
        return InvertibleSequential(AdditiveCoupling(f))

    x = torch.randn(2, 4, 4, 4, 4)
    stats = {}
    for mode in ("store", "invert"):
        chain = make()
        chain.memory = mode
        chain(x).sum().backward()
        bn = chain[0].f[0]
        stats[mode] = (bn.running_mean.clone(), int(bn.num_batches_tracked))
    torch.testing.assert_close(stats["invert"][0], stats["store"][0])
    assert stats["invert"][1] == stats["store"][1] == 1


def test_bfloat16_autocast_runs_in_the_autocast_dtype() -> None:
    chain = make_chain(4)
    x = torch.randn(1, 4, 6, 6, 6, requires_grad=True)
    seen = []
    chain[1].f[3].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = chain(x)
    y.float().square().sum().backward()
    assert seen == [torch.bfloat16, torch.bfloat16]  # forward and the graded recompute
    ref = copy.deepcopy(chain)
    ref.memory = "store"
    xr = x.detach().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        yr = ref(xr)
    yr.float().square().sum().backward()
    torch.testing.assert_close(x.grad, xr.grad, rtol=0.05, atol=0.05)


def test_double_backward_raises_one_clear_error() -> None:
    chain = make_chain(2)
    x = torch.randn(1, 4, 4, 4, 4, requires_grad=True)
    with pytest.raises(RuntimeError, match="does not support double backward"):
        torch.autograd.grad(chain(x).sum(), x, create_graph=True)


@pytest.mark.parametrize("mode", ["checkpoint", "store"])
def test_double_backward_works_in_the_other_modes(mode: str) -> None:
    chain = make_chain(2, memory=mode).double()
    x = torch.randn(1, 4, 4, 4, 4, dtype=F64, requires_grad=True)
    (g,) = torch.autograd.grad(chain(x).square().sum(), x, create_graph=True)
    (gg,) = torch.autograd.grad(g.sum(), x)
    assert torch.isfinite(gg).all() and gg.abs().sum() > 0


# Dynamo itself touches .grad of non-leaf tensors while tracing (a torch-internal warning).
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf")
def test_torch_compile_gives_the_same_gradients() -> None:
    net = nn.Sequential(nn.Conv3d(4, 4, 1), make_chain(2), nn.Conv3d(4, 4, 1))
    x = torch.randn(1, 4, 4, 4, 4, requires_grad=True)
    compiled = torch.compile(net, backend="aot_eager")
    (g_compiled,) = torch.autograd.grad(compiled(x).square().sum(), x)
    (g_eager,) = torch.autograd.grad(net(x).square().sum(), x)
    torch.testing.assert_close(g_compiled, g_eager, rtol=1e-5, atol=1e-6)


def test_anchors_bound_drift_and_report_the_error() -> None:
    chain = make_chain(8, anchor_every=4, drift_tol=1e-6).double()  # drift is opt-in
    x = torch.randn(1, 4, 4, 4, 4, dtype=F64, requires_grad=True)
    chain(x).sum().backward()
    assert sorted(chain.inverse_errors) == [0, 4]
    assert max(chain.inverse_errors.values()) < 1e-12
    assert max(gradient_parity(chain, x).values()) < 1e-10


class _Lossy(nn.Module):
    """A block whose inverse is off by a relative 1e-2: drift the check must catch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y / 2 * 1.01


@pytest.mark.parametrize("on_drift", ["warn", "checkpoint"])
def test_drift_is_detected_and_gradients_stay_exact(on_drift: str) -> None:
    chain = InvertibleSequential(_Lossy(), _Lossy(), drift_tol=1e-3, on_drift=on_drift)
    x = torch.randn(3, 4, requires_grad=True)
    with pytest.warns(InverseDriftWarning, match="exceeds drift_tol"):
        chain(x).sum().backward()
    assert chain.inverse_errors[0] == pytest.approx(0.0201, rel=1e-3)
    torch.testing.assert_close(x.grad, torch.full_like(x, 4.0))
    assert chain.memory == ("checkpoint" if on_drift == "checkpoint" else "invert")


class _Doubling(nn.Module):
    """``y = 2 x`` with its exact inverse."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y / 2


class _NaNInverse(_Doubling):
    """A block whose inverse returns NaN: its drift compares false with any tolerance."""

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return torch.full_like(y, float("nan"))


@pytest.mark.parametrize("on_drift", ["warn", "checkpoint"])
def test_nan_inverse_is_reported_as_drift(on_drift: str) -> None:
    # block 0 is the anchor where drift is measured; block 1 rebuilds its input exactly
    chain = InvertibleSequential(_NaNInverse(), _Doubling(), drift_tol=1e-3, on_drift=on_drift)
    x = torch.randn(3, 4, requires_grad=True)
    with pytest.warns(InverseDriftWarning, match="inverse drift nan at block 0 exceeds"):
        chain(x).sum().backward()
    assert list(chain.inverse_errors) == [0] and math.isnan(chain.inverse_errors[0])
    torch.testing.assert_close(x.grad, torch.full_like(x, 4.0))  # from the kept input
    assert chain.memory == ("checkpoint" if on_drift == "checkpoint" else "invert")


def test_inverse_of_the_chain_undoes_it() -> None:
    chain = make_chain(5).double()
    x = torch.randn(2, 4, 4, 4, 4, dtype=F64)
    torch.testing.assert_close(chain.inverse(chain(x)), x, rtol=1e-12, atol=1e-12)


def test_unknown_memory_mode_suggests_the_right_one() -> None:
    with pytest.raises(ValueError, match="Did you mean 'invert'"):
        make_chain(1, memory="invertt")
    with pytest.raises(ValueError, match="unknown memory"):
        make_chain(1).memory = "fast"


def test_non_invertible_block_is_a_type_error() -> None:
    with pytest.raises(TypeError, match=r"block 1 \(Conv3d\) has no inverse"):
        InvertibleSequential(AdditiveCoupling(nn.Identity()), nn.Conv3d(2, 2, 1))
    with pytest.raises(TypeError, match="not an nn.Module"):
        InvertibleSequential(lambda t: t)  # type: ignore[arg-type]


def test_mismatched_context_batch_is_a_value_error() -> None:
    chain = InvertibleSequential(_ContextBlock())
    with pytest.raises(ValueError, match="context tensor 0 has batch size 3"):
        chain(torch.randn(2, 4, 4, 4, 4), torch.randn(3, 4, 4, 4, 4), 1.0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"anchor_every": 0}, "anchor_every"),
        ({"drift_tol": -1.0}, "drift_tol"),
        ({"on_drift": "raise"}, "on_drift"),
    ],
)
def test_bad_drift_options(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_chain(1, **kwargs)


class _LossyScale(nn.Module):
    """``y = w x`` with a learnable ``w`` and an inverse that is 1% off."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(2.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.w

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y / self.w * 1.01


@pytest.mark.parametrize(("anchor_every", "worst"), [(None, 0.04), (2, 0.01), (1, 0.0)])
def test_anchored_blocks_are_differentiated_at_their_kept_input(anchor_every, worst) -> None:
    chain = InvertibleSequential(*[_LossyScale() for _ in range(4)], anchor_every=anchor_every)
    x = torch.randn(3, 4, dtype=F64, requires_grad=True)
    errors = gradient_parity(chain.double(), x, loss=lambda y: (y.sin() * y).sum())
    assert max(errors.values()) == pytest.approx(worst, abs=1e-3)


class _CountingInverse(_LossyScale):
    """Counts calls of ``inverse`` (exact inverse)."""

    calls = 0

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        type(self).calls += 1
        return y / self.w


@pytest.mark.parametrize(("drift_tol", "drift_every", "measured"), [(None, 1, 0), (1e-3, 3, 2)])
def test_drift_is_measured_only_when_asked_and_sampled(drift_tol, drift_every, measured) -> None:
    chain = InvertibleSequential(
        *[_CountingInverse() for _ in range(4)],
        anchor_every=2,
        drift_tol=drift_tol,
        drift_every=drift_every,
    )
    _CountingInverse.calls = 0
    for _ in range(4):  # steps 0 and 3 are measured when drift_every=3
        chain(torch.randn(2, 3, requires_grad=True)).sum().backward()
    # per step: 2 non-anchored blocks inverted; plus 2 anchors re-inverted on a measured step
    assert _CountingInverse.calls == 4 * 2 + measured * 2
