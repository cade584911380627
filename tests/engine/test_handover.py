"""Tensors let go after forward and handed back rebuilt: the slot, its conv, the U-Net skips."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from invseg.engine import AdditiveCoupling, InvertibleSequential, Slot, activation_bytes, slot_conv
from invseg.nets import PartiallyInvResUNet


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("stride", [2, (1, 2, 2)])
def test_slot_conv_has_the_gradients_of_the_conv_and_saves_nothing_of_its_input(bias, stride):
    conv = nn.Conv3d(3, 5, 3, stride=stride, padding=1, bias=bias).double()
    x = torch.randn(2, 3, 6, 8, 8, dtype=torch.float64, requires_grad=True)
    grad = torch.randn_like(conv(x))
    expected = torch.autograd.grad(conv(x), [x, *conv.parameters()], grad)
    slot = Slot()
    y = slot_conv(conv, x, slot)
    torch.testing.assert_close(y, conv(x))
    assert activation_bytes(lambda: slot_conv(conv, x, Slot())) == 0
    slot.put(x.detach())
    got = torch.autograd.grad(y, [x, *conv.parameters()], grad)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)


def test_slot_conv_under_autocast_matches_autograd():
    conv = nn.Conv3d(2, 4, 3, stride=2, padding=1)
    x = torch.randn(1, 2, 8, 8, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = conv(x)
        slot = Slot()
        y = slot_conv(conv, x, slot)
    assert y.dtype == ref.dtype == torch.bfloat16
    grad = torch.randn_like(ref)
    expected = torch.autograd.grad(ref, [x, conv.weight, conv.bias], grad)
    slot.put(x.detach())
    got = torch.autograd.grad(y, [x, conv.weight, conv.bias], grad)
    for g, e in zip(got, expected):
        assert g.dtype == e.dtype
        torch.testing.assert_close(g, e)


def test_an_empty_slot_is_a_clear_error():
    conv = nn.Conv3d(1, 1, 3, padding=1)
    y = slot_conv(conv, torch.randn(1, 1, 4, 4, 4, requires_grad=True), Slot())
    with pytest.raises(RuntimeError, match="was not rebuilt before backward needed it"):
        y.sum().backward()


def test_a_chain_hands_its_output_over_only_when_it_inverts():
    chain = InvertibleSequential(AdditiveCoupling(nn.Conv3d(1, 1, 3, padding=1)))
    x = torch.randn(1, 2, 4, 4, 4, requires_grad=True)
    for memory, used in (("invert", True), ("store", False)):
        chain.memory = memory
        with chain.linked(output_slot=Slot()) as link:
            chain(x)
        assert link.used is used


def test_partially_keeps_no_skip_and_rebuilds_it_in_backward():
    torch.manual_seed(0)
    store = PartiallyInvResUNet(3, 2, 3, channels=(8, 16, 32), memory="store").double()
    invert = PartiallyInvResUNet(3, 2, 3, channels=(8, 16, 32), memory="invert").double()
    invert.load_state_dict(store.state_dict())
    x = torch.randn(2, 2, 16, 16, 16, dtype=torch.float64)
    held = activation_bytes(lambda: invert(x).sum())
    # what is left: the input (read by the stem), the head's input (the level-0 decoder output)
    # and the up convs' inputs (level-1 decoder and bottom outputs); no encoder output
    assert held == x.numel() * 8 + 2 * (8 * 16**3 + 16 * 8**3 + 32 * 4**3) * 8
    grads = []
    for model in (store, invert):
        model(x).square().mean().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for key, ref in grads[0].items():
        torch.testing.assert_close(grads[1][key], ref, rtol=1e-7, atol=1e-10, msg=key)


def test_partially_with_a_vae_keeps_its_skips_for_a_vae_only_loss():
    net = PartiallyInvResUNet(3, 2, 3, channels=(8, 16), vae=True, input_image_size=(8, 8, 8))
    assert net.train().rebuilds_skips() is False
    assert net.eval().rebuilds_skips() is True
