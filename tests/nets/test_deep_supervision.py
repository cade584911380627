"""Deep supervision: one logit map per decoder level, exact gradients in every memory mode."""

from __future__ import annotations

import pytest
import torch
from monai.losses import DeepSupervisionLoss

from tests.nets.conftest import INVERTIBLE, NETS


@pytest.mark.parametrize("name", NETS)
def test_training_returns_every_level_but_the_lowest_full_resolution_first(make_net, name):
    net = make_net(name, channels=(8, 16, 32, 64), deep_supervision=True)
    x = torch.randn(2, 2, 9, 16, 12)  # padded to 16^3 inside, cropped back
    out = net(x)
    assert isinstance(out, list) and len(out) == 3
    assert [tuple(o.shape) for o in out] == [(2, 3, 9, 16, 12), (2, 3, 5, 8, 6), (2, 3, 3, 4, 3)]
    net.eval()
    with torch.no_grad():
        assert tuple(net(x).shape) == (2, 3, 9, 16, 12)  # inference: full resolution only


@pytest.mark.parametrize("name", NETS)
def test_the_heads_leave_the_other_weights_as_without_them(make_net, name):
    torch.manual_seed(1)
    plain = make_net(name).state_dict()
    torch.manual_seed(1)
    deep = make_net(name, deep_supervision=True).state_dict()
    extra = sorted(set(deep) - set(plain))
    assert extra == ["supervision_heads.0.bias", "supervision_heads.0.weight"]
    for key, value in plain.items():
        assert torch.equal(deep[key], value), key


@pytest.mark.parametrize("name", INVERTIBLE)
@pytest.mark.parametrize("mode", ["invert", "checkpoint"])
def test_gradients_under_the_deep_supervision_loss_equal_store(make_net, name, mode):
    torch.manual_seed(0)
    store = make_net(name, "store", channels=(8, 16, 32, 64), deep_supervision=True).double()
    other = make_net(name, mode, channels=(8, 16, 32, 64), deep_supervision=True).double()
    other.load_state_dict(store.state_dict())
    x = torch.randn(1, 2, 16, 16, 16, dtype=torch.float64)
    target = (torch.rand(1, 3, 16, 16, 16) > 0.5).double()
    loss_fn = DeepSupervisionLoss(torch.nn.functional.binary_cross_entropy_with_logits)
    grads = []
    for model in (store, other):
        loss_fn(model(x), target).backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for key, ref in grads[0].items():
        assert ref.abs().sum() > 0, key
        torch.testing.assert_close(grads[1][key], ref, rtol=1e-7, atol=1e-10, msg=key)


def test_the_fully_heads_read_the_levels_the_body_supervises(make_net):
    """Each head's gradient comes from its own output alone: zero when only the others count."""
    net = make_net("fully", "invert", deep_supervision=True)
    out = net(torch.randn(1, 2, 8, 8, 8))
    out[0].sum().backward()
    head = net.supervision_heads[0]
    assert head.weight.grad is None or not head.weight.grad.any()
    net.zero_grad()
    net(torch.randn(1, 2, 8, 8, 8))[1].sum().backward()
    assert head.weight.grad.abs().sum() > 0
    assert net.stem.weight.grad.abs().sum() > 0  # the level-1 loss reaches the encoder


def test_fully_with_the_vae_returns_the_levels_and_the_vae_loss(make_net):
    net = make_net("fully", deep_supervision=True, vae=True, input_image_size=(8, 8, 8))
    levels, vae_loss = net(torch.randn(1, 2, 8, 8, 8))
    assert [tuple(o.shape[2:]) for o in levels] == [(8, 8, 8), (4, 4, 4)]
    assert vae_loss.ndim == 0 and torch.isfinite(vae_loss)


def test_switching_deep_supervision(make_net):
    plain = make_net("partially")
    with pytest.raises(ValueError, match="built without deep supervision heads"):
        plain.deep_supervision = True
    deep = make_net("partially", deep_supervision=True)
    deep.deep_supervision = False
    assert isinstance(deep(torch.randn(1, 2, 8, 8, 8)), torch.Tensor)
    deep.deep_supervision = True
    assert len(deep(torch.randn(1, 2, 8, 8, 8))) == 2
