"""Fully-InvRes with ``lift=True``: invertible ends, the activation floor, exact gradients."""

from __future__ import annotations

import pytest
import torch

from invseg.engine import activation_bytes
from invseg.nets import FullyInvResUNet
from invseg.nets._fully_level import ChannelLift, LiftedCoupling


def _loss(model, x):
    return model(x).square().mean()


def _pair(**kw):
    torch.manual_seed(0)
    store = FullyInvResUNet(3, 4, 3, channels=(8, 16, 32), memory="store", lift=True, **kw)
    invert = FullyInvResUNet(3, 4, 3, channels=(8, 16, 32), memory="invert", lift=True, **kw)
    invert.load_state_dict(store.state_dict())
    return store.double(), invert.double()


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_lift_gradients_match_store_in_float64(dropout):
    store, invert = _pair(dropout=dropout)
    x = torch.randn(1, 4, 12, 12, 12, dtype=torch.float64)
    grads = []
    for model in (store, invert):
        torch.manual_seed(3)
        model.zero_grad(set_to_none=True)
        _loss(model, x).backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert set(grads[0]) == set(grads[1])
    for name, ref in grads[0].items():
        assert ref.abs().sum() > 0, name
        torch.testing.assert_close(grads[1][name], ref, rtol=1e-7, atol=1e-10, msg=name)


def test_lift_invert_keeps_only_the_body_output_and_half_the_input():
    _, invert = _pair()
    x = torch.randn(1, 4, 16, 16, 16, dtype=torch.float64)
    held = activation_bytes(_loss, invert.float(), x.float())
    # channels[0] = 8 body output channels and the 2 input channels x2 is lifted from
    # (float32): no separate logits, no whole input
    assert held == (8 + 2) * 16**3 * 4


@pytest.mark.parametrize("blocks", [1, 2])
def test_lifted_first_coupling_evaluates_no_conv_in_backward(blocks):
    torch.manual_seed(0)
    net = FullyInvResUNet(3, 4, 3, channels=(8, 16), blocks=blocks, memory="invert", lift=True)
    first = net.body.blocks[0]
    assert isinstance(first, LiftedCoupling)
    calls = []
    for unit in (first.coupling.f, first.coupling.g):
        unit[-1].register_forward_hook(lambda *_: calls.append(None))
    loss = _loss(net, torch.randn(1, 4, 8, 8, 8))
    forward_calls = len(calls)
    loss.backward()
    assert forward_calls == 2 and len(calls) == 2  # F and G once each, in forward only
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in first.parameters())


def test_lift_floor_is_below_10_percent_of_the_store_twin_at_one_block():
    torch.manual_seed(0)
    kw = {"channels": (16, 32, 64, 128), "lift": True}
    x = torch.randn(1, 4, 32, 32, 32)
    invert = activation_bytes(_loss, FullyInvResUNet(3, 4, 3, memory="invert", **kw), x)
    store = activation_bytes(_loss, FullyInvResUNet(3, 4, 3, memory="store", **kw), x)
    assert invert / store <= 0.10


@pytest.mark.parametrize("in_channels", [1, 3, 4])
def test_lift_has_no_parameters_is_an_isometry_and_lifts_x2_from_few_inputs(in_channels):
    lift = ChannelLift(in_channels, 16)
    assert not list(lift.parameters())
    w = lift.weight.double()
    eye = torch.eye(in_channels, dtype=torch.float64)
    torch.testing.assert_close(w.T @ w, eye, atol=1e-6, rtol=0)
    assert lift.split == in_channels // 2
    assert torch.count_nonzero(w[8:, : lift.split]) == 0  # exactly
    assert (w.abs().sum(dim=1) > 0).all()  # no channel is identically zero
    x = torch.randn(2, in_channels, 3, 3, 3, dtype=torch.float64)
    h = lift.double()(x)
    torch.testing.assert_close(lift.second_half(x[:, lift.split :]), h[:, 8:])
    net = FullyInvResUNet(3, 4, 3, channels=(8, 16), lift=True)
    assert net.head is None and net.stem is None
    assert isinstance(net.body.blocks[0].lift, ChannelLift)


@pytest.mark.parametrize(
    ("kw", "match"),
    [({"in_channels": 9}, "in_channels <= channels"), ({"out_channels": 9}, "out_channels=9")],
)
def test_lift_rejects_more_channels_than_channels0(kw, match):
    args = {"in_channels": 4, "out_channels": 3} | kw
    with pytest.raises(ValueError, match=match):
        FullyInvResUNet(3, channels=(8, 16), lift=True, **args)


def test_lift_checkpoint_mode_checkpoints_the_lifted_coupling_too():
    torch.manual_seed(0)
    kw = {"channels": (8, 16), "memory": "checkpoint"}
    lift = FullyInvResUNet(3, 4, 3, lift=True, **kw).double()
    store = FullyInvResUNet(3, 4, 3, lift=True, channels=(8, 16), memory="store").double()
    store.load_state_dict(lift.state_dict())
    x = torch.randn(1, 4, 8, 8, 8, dtype=torch.float64)
    for model in (lift, store):
        _loss(model, x).backward()
    for (name, p), q in zip(lift.named_parameters(), store.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-12, msg=name)
    assert lift.body.blocks[0].checkpoint and not store.body.blocks[0].checkpoint
    plain = FullyInvResUNet(3, 4, 3, lift=False, **kw)
    # the lifted coupling keeps its 4-channel input, not its activations: below the stem net
    assert activation_bytes(_loss, lift.float(), x.float()) < activation_bytes(
        _loss, plain, x.float()
    )
