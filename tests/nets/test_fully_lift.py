"""Fully-InvRes with ``lift=True``: invertible ends, the activation floor, exact gradients."""

from __future__ import annotations

import pytest
import torch

from invseg.engine import activation_bytes
from invseg.nets import FullyInvResUNet
from invseg.nets._fully_level import ChannelLift


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


def test_lift_invert_keeps_only_the_body_output():
    _, invert = _pair()
    x = torch.randn(1, 4, 16, 16, 16, dtype=torch.float64)
    held = activation_bytes(_loss, invert.float(), x.float())
    assert held == 8 * 16**3 * 4  # channels[0] float32 channels: no input, no separate logits


def test_lift_floor_is_below_10_percent_of_the_store_twin_at_one_block():
    torch.manual_seed(0)
    kw = {"channels": (16, 32, 64, 128), "lift": True}
    x = torch.randn(1, 4, 32, 32, 32)
    invert = activation_bytes(_loss, FullyInvResUNet(3, 4, 3, memory="invert", **kw), x)
    store = activation_bytes(_loss, FullyInvResUNet(3, 4, 3, memory="store", **kw), x)
    assert invert / store <= 0.10


def test_lift_has_no_stem_or_head_parameters_and_is_an_isometry():
    lift = ChannelLift(4, 16)
    assert not list(lift.parameters())
    w = lift.weight.double()
    torch.testing.assert_close(w.T @ w, torch.eye(4, dtype=torch.float64), atol=1e-6, rtol=0)
    net = FullyInvResUNet(3, 4, 3, channels=(8, 16), lift=True)
    assert net.head is None and isinstance(net.stem, ChannelLift)


@pytest.mark.parametrize(
    ("kw", "match"),
    [({"in_channels": 9}, "in_channels <= channels"), ({"out_channels": 9}, "out_channels=9")],
)
def test_lift_rejects_more_channels_than_channels0(kw, match):
    args = {"in_channels": 4, "out_channels": 3} | kw
    with pytest.raises(ValueError, match=match):
        FullyInvResUNet(3, channels=(8, 16), lift=True, **args)
