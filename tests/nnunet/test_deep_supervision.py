"""Both wrappers under nnU-Net's deep supervision and per-axis strides: shapes, exact gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from invseg.nnunet import FullyInvResNNUNet, PartiallyInvResNNUNet
from tests.nnunet.conftest import IN_CHANNELS, REGIONS, arch_kwargs

WRAPPERS = {"partially": PartiallyInvResNNUNet, "fully": FullyInvResNNUNet}
F64 = torch.float64
#: four stages with nnU-Net's anisotropic strides (thick slices first, a BraTS-like last)
ANISOTROPIC = [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 1]]


def _stages(strides: list) -> dict:
    n = len(strides)
    return {
        "n_stages": n,
        "features_per_stage": [8, 16, 32, 64][:n],
        "kernel_sizes": [[3, 3, 3]] * n,
        "strides": strides,
        "n_conv_per_stage": [2] * n,
        "n_conv_per_stage_decoder": [2] * (n - 1),
    }


def _build(name: str, deep_supervision: bool, strides: list = ANISOTROPIC, **changes):
    kwargs = arch_kwargs(**_stages(strides) | changes)
    return WRAPPERS[name](IN_CHANNELS, REGIONS, **kwargs, deep_supervision=deep_supervision)


def _ds_scales(strides: list) -> np.ndarray:
    """nnUNetTrainer._get_deep_supervision_scales: what the DS targets are down-sampled by."""
    return 1 / np.cumprod(np.vstack(strides), axis=0)[:-1]


def _ds_weights(strides: list) -> np.ndarray:
    """nnUNetTrainer._build_loss's deep-supervision weights: 1/2**k, the last 0, normalised."""
    weights = np.array([1 / (2**i) for i in range(len(_ds_scales(strides)))])
    weights[-1] = 0
    return weights / weights.sum()


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("name", list(WRAPPERS))
def test_one_output_per_decoder_stage_full_resolution_first(name: str, train: bool) -> None:
    net = _build(name, True).train(train)
    patch = (8, 16, 12)  # a multiple of the strides' product on each axis: (4, 8, 4)
    x = torch.randn(1, IN_CHANNELS, *patch)
    with torch.no_grad():
        out = net(x)  # nnU-Net's validation_step reads out[0] in eval mode: a list there too
        assert len(out) == len(_ds_weights(ANISOTROPIC)) == 3  # n_stages - 1
        want = [[round(p * s) for p, s in zip(patch, sc)] for sc in _ds_scales(ANISOTROPIC)]
        assert [list(o.shape[2:]) for o in out] == want == [[8, 16, 12], [8, 8, 6], [4, 4, 3]]
        net.decoder.deep_supervision = False  # as nnUNetTrainer.set_deep_supervision_enabled
        assert net.net.deep_supervision is False
        torch.testing.assert_close(net(x), out[0])  # the full-resolution map is the net's


@pytest.mark.parametrize("name", list(WRAPPERS))
def test_any_size_is_padded_inside_and_cropped_back_on_every_level(name: str) -> None:
    net = _build(name, True)
    out = net(torch.randn(1, IN_CHANNELS, 7, 13, 10))  # padded to (8, 16, 12)
    assert [tuple(o.shape[2:]) for o in out] == [(7, 13, 10), (7, 7, 5), (4, 4, 3)]


@pytest.mark.parametrize("name", list(WRAPPERS))
def test_decoder_is_the_net_and_its_weights_are_named_once(name: str) -> None:
    net = _build(name, False)
    assert net.decoder is net.net and net.net.supervise_in_eval
    keys = list(net.state_dict())
    assert all(k.startswith("net.") for k in keys)  # no second name through decoder
    assert sum(k.startswith("net.supervision_heads.") for k in keys) == 2 * 2  # levels 1, 2
    net.decoder.deep_supervision = True
    assert len(net(torch.randn(1, IN_CHANNELS, 8, 8, 8))) == 3


@pytest.mark.parametrize("name", list(WRAPPERS))
def test_weights_trained_with_deep_supervision_load_into_the_inference_net(name: str) -> None:
    trained = _build(name, True)
    predictor = _build(name, False)  # as nnU-Net's predictor builds it
    predictor.load_state_dict(trained.state_dict())  # strict: the heads exist either way
    x = torch.randn(1, IN_CHANNELS, 8, 16, 12)
    with torch.no_grad():
        torch.testing.assert_close(predictor(x), trained(x)[0])


def _ds_loss(out: list, target: torch.Tensor, strides: list) -> torch.Tensor:
    """nnU-Net's DeepSupervisionWrapper over BCE: targets pooled to each scale, weight 0 skipped."""
    steps = np.cumprod(np.vstack(strides), axis=0)
    loss = torch.zeros((), dtype=out[0].dtype)
    for w, o, step in zip(_ds_weights(strides), out, steps):
        if w != 0:
            t = target[(..., *(slice(None, None, int(s)) for s in step))]
            loss = loss + w * nn.functional.binary_cross_entropy_with_logits(o, t)
    return loss


@pytest.mark.parametrize("mode", ["invert", "checkpoint"])
@pytest.mark.parametrize("name", list(WRAPPERS))
def test_gradients_under_the_deep_supervision_loss_equal_store(name: str, mode: str) -> None:
    store = _build(name, True, memory="store").double()
    other = _build(name, True, memory=mode).double()
    other.load_state_dict(store.state_dict())
    x = torch.randn(1, IN_CHANNELS, 8, 16, 12, dtype=F64)
    target = (torch.rand(1, REGIONS, 8, 16, 12) > 0.5).double()
    grads = []
    for net in (store, other):  # torch's default init: no residual function starts at zero
        _ds_loss(net(x), target, ANISOTROPIC).backward()
        grads.append({n: p.grad for n, p in net.named_parameters()})
    assert grads[0]["net.supervision_heads.0.weight"].abs().sum() > 0  # level 1, weight 1/3
    head = grads[0]["net.supervision_heads.1.weight"]  # weight 0: level 2 is left out
    assert head is None or not head.any()
    for key, ref in grads[0].items():
        if ref is not None:
            torch.testing.assert_close(grads[1][key], ref, rtol=1e-7, atol=1e-10, msg=key)


@pytest.mark.parametrize("name", list(WRAPPERS))
def test_an_anisotropic_plan_down_samples_only_the_strided_axes(name: str) -> None:
    net = _build(name, True, strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2]])
    assert net.net.strides == ((1, 2, 2), (2, 2, 2)) and net.net.multiples == (2, 4, 4)
    if name == "fully":  # a [1, 2, 2] squeeze makes 4 channels of one, not 8
        assert net.net.effective_channels == (8, 16, 32)
        assert net.net.skip_channels == (4, 12)
    out = net(torch.randn(2, IN_CHANNELS, 6, 12, 12))
    assert [tuple(o.shape) for o in out] == [(2, REGIONS, 6, 12, 12), (2, REGIONS, 6, 6, 6)]
    assert all(torch.isfinite(o).all() for o in out)
