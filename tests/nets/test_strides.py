"""Per-axis strides (nnU-Net's anisotropic plans): shapes, exact inverse and gradients."""

from __future__ import annotations

import pytest
import torch

from invseg.nets import FullyInvResUNet
from invseg.nets.registry import check_arguments
from tests.nets.conftest import INVERTIBLE, NETS

THICK = [[1, 2, 2], 2]  # keep the depth at the first down-sampling, as for thick slices


@pytest.mark.parametrize("name", NETS)
def test_anisotropic_strides_resample_only_the_strided_axes(make_net, name):
    net = make_net(name, strides=THICK, deep_supervision=True)
    assert net.strides == ((1, 2, 2), (2, 2, 2)) and net.multiples == (2, 4, 4)
    if name != "fully":
        assert net.down[0].stride == (1, 2, 2) and net.up[0].stride == (1, 2, 2)
    out = net(torch.randn(1, 2, 5, 12, 10))  # padded to (6, 12, 12) inside
    assert [tuple(o.shape) for o in out] == [(1, 3, 5, 12, 10), (1, 3, 5, 6, 5)]


def test_fully_widths_follow_the_channel_factor_of_each_stride():
    net = FullyInvResUNet(3, 2, 3, channels=(16, 32, 64), strides=THICK)
    assert net.effective_channels == (16, 32, 64)
    assert net.skip_channels == (8, 24)  # a (1, 2, 2) squeeze makes 4 channels of one
    h = torch.randn(1, 16, 4, 8, 8, dtype=torch.float64)
    body = net.body.double()
    with torch.no_grad():
        torch.testing.assert_close(body.inverse(body(h)), h, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", INVERTIBLE)
def test_invert_gradients_equal_store_with_anisotropic_strides(make_net, name):
    torch.manual_seed(0)
    store = make_net(name, "store", strides=THICK).double()
    invert = make_net(name, "invert", strides=THICK).double()
    invert.load_state_dict(store.state_dict())
    x = torch.randn(1, 2, 4, 8, 8, dtype=torch.float64)
    grads = []
    for model in (store, invert):
        model(x).square().mean().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for key, ref in grads[0].items():
        assert ref.abs().sum() > 0, key
        torch.testing.assert_close(grads[1][key], ref, rtol=1e-7, atol=1e-10, msg=key)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"strides": [2]}, r"one entry per down-sampling, len\(channels\) - 1 = 2"),
        ({"strides": [[1, 1, 1], 2]}, r"strides\[0\]=\[1, 1, 1\] folds no axis"),
        ({"strides": [2, [1, 3, 3]]}, r"strides\[1\] must be"),
        ({"strides": THICK, "vae": True, "input_image_size": (8, 8, 8)}, "vae=True needs"),
    ],
)
@pytest.mark.parametrize("name", NETS)
def test_bad_strides_are_refused_naming_the_entry(make_net, name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_net(name, **kwargs)


def test_configs_may_set_strides_and_deep_supervision():
    args = {"channels": [8, 16, 32], "strides": THICK, "deep_supervision": True}
    check_arguments("PartiallyInvResUNet", args, "model")
    with pytest.raises(ValueError, match="model.strides"):
        check_arguments("PartiallyInvResUNet", {"strides": "thick"}, "model")
