"""The engine reuses storage it owns: in-place forwards, in-place reverses, unit VJPs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from invseg.engine import AdditiveCoupling, InvertibleSequential, Tape
from invseg.engine._unit import unit_vjp
from invseg.engine.testing import gradient_parity
from invseg.nets import FullyInvResUNet, PartiallyInvResUNet
from invseg.nets._fully_level import FeatureTap
from invseg.runtime.step_memory import measure_step_memory


def unit(channels: int, act: nn.Module) -> nn.Sequential:
    return nn.Sequential(
        nn.GroupNorm(1, channels), act, nn.Conv3d(channels, channels, 3, padding=1)
    )


def coupling(channels: int = 4) -> AdditiveCoupling:
    return AdditiveCoupling(unit(channels // 2, nn.LeakyReLU(0.1)))


def test_forward_in_place_gives_forward_bit_for_bit_in_the_input_storage() -> None:
    block = coupling()
    x = torch.randn(2, 4, 6, 6, 6)
    with torch.no_grad():
        expected = block(x)
        buffer = x.clone()
        y = block.forward_in_place(buffer)
    assert y.data_ptr() == buffer.data_ptr()
    assert torch.equal(y, expected)


def test_chain_without_graph_leaves_the_callers_input_alone() -> None:
    chain = InvertibleSequential(*[coupling() for _ in range(3)])
    x = torch.randn(1, 4, 6, 6, 6)
    kept = x.clone()
    with torch.no_grad():
        y = chain(x)
        reference = x
        for block in chain.blocks:
            reference = block(reference)
    assert torch.equal(x, kept)
    assert torch.equal(y, reference)
    assert y.data_ptr() != x.data_ptr()


def test_a_block_that_keeps_its_output_is_not_overwritten() -> None:
    tap = FeatureTap()
    chain = InvertibleSequential(coupling(), tap, coupling())
    x = torch.randn(1, 4, 6, 6, 6)
    with torch.no_grad():
        chain(x)
        middle = chain.blocks[0](x)
    assert torch.equal(tap.value, middle)


@pytest.mark.parametrize(
    "act", [nn.LeakyReLU(0.01), nn.ReLU(), nn.ELU(), nn.Identity()], ids=lambda a: type(a).__name__
)
@pytest.mark.parametrize("with_output", [True, False])
def test_unit_vjp_matches_autograd(act: nn.Module, with_output: bool) -> None:
    """Gradients of cond and of every parameter, and the output handed to ``consume``."""
    fn = unit(3, act).double()
    owner = nn.ModuleList([fn])
    cond = torch.randn(2, 3, 5, 5, 5, dtype=torch.float64)
    grad_h = torch.randn(2, 3, 5, 5, 5, dtype=torch.float64)
    leaf = cond.clone().requires_grad_()
    h = fn(leaf)
    expected = torch.autograd.grad(h, [leaf, *fn.parameters()], grad_h)
    params = list(fn.parameters())
    tape = Tape(params, ())
    seen = []
    grad_cond = unit_vjp(owner, fn, cond, grad_h, None, tape, seen.append if with_output else None)
    torch.testing.assert_close(grad_cond, expected[0], rtol=1e-12, atol=1e-12)
    for got, want in zip(tape.grads, expected[1:]):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    if with_output:
        torch.testing.assert_close(seen[0], h.detach(), rtol=1e-12, atol=1e-12)
    else:
        assert seen == []


def test_consumed_output_chain_gives_the_gradients_of_plain_autograd() -> None:
    torch.manual_seed(0)
    chain = InvertibleSequential(*[coupling() for _ in range(3)], consume_output=True)
    net = nn.Sequential(nn.Conv3d(2, 4, 1), chain, nn.Conv3d(4, 1, 1)).double()
    x = torch.randn(2, 2, 6, 6, 6, dtype=torch.float64, requires_grad=True)
    errors = gradient_parity(net, x)
    assert errors and max(errors.values()) < 1e-10


def _graph_maps(chain: InvertibleSequential) -> float:
    net = nn.Sequential(nn.Conv3d(2, 16, 1), chain, nn.Conv3d(16, 1, 1))
    step = measure_step_memory(net, 2, (16, 16, 16))
    return step.graph_bytes / (16 * 16**3 * 4)


def test_consuming_the_output_saves_two_feature_maps_at_the_backward_peak() -> None:
    """Each block reverses in its output's storage; consume_output extends that to the first."""
    kept = _graph_maps(InvertibleSequential(*[coupling(16) for _ in range(3)]))
    consumed = _graph_maps(
        InvertibleSequential(*[coupling(16) for _ in range(3)], consume_output=True)
    )
    assert kept - consumed == pytest.approx(2.0, abs=0.05)


@pytest.mark.parametrize(("net", "ceiling"), [(FullyInvResUNet, 5.0), (PartiallyInvResUNet, 6.0)])
def test_invertible_nets_hold_few_feature_maps_in_a_step(net: type, ceiling: float) -> None:
    """Graph peak of one step at 32^3 in 16-channel maps (12.2 and 8.4 before storage reuse)."""
    model = net(3, 4, 3, channels=(16, 32, 64, 128), memory="invert")
    step = measure_step_memory(model, 4, (32, 32, 32))
    assert step.graph_bytes / (16 * 32**3 * 4) < ceiling
