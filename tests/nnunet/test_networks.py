"""The nnU-Net-signature wrappers: arguments, deep supervision, exact gradients, init, compile."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from invseg.engine import AdditiveCoupling
from invseg.nnunet import FullyInvResNNUNet, PartiallyInvResNNUNet, net_options
from invseg.nnunet.networks import residual_ends
from tests.nnunet.conftest import IN_CHANNELS, REGIONS, arch_kwargs

WRAPPERS = {"partially": PartiallyInvResNNUNet, "fully": FullyInvResNNUNet}
F64 = torch.float64


def _build(name: str, deep_supervision: bool = False, **changes) -> nn.Module:
    kwargs = arch_kwargs(**changes)
    return WRAPPERS[name](IN_CHANNELS, REGIONS, **kwargs, deep_supervision=deep_supervision)


def _ds_weights(strides: list) -> np.ndarray:
    """nnUNetTrainer's deep-supervision scales and loss weights (_build_loss) for ``strides``."""
    scales = list(list(i) for i in 1 / np.cumprod(np.vstack(strides), axis=0))[:-1]
    weights = np.array([1 / (2**i) for i in range(len(scales))])
    weights[-1] = 0
    return weights / weights.sum()


def test_plans_arguments_become_the_nets_options() -> None:
    options = net_options(**arch_kwargs())
    assert options == {
        "channels": (8, 16, 32),
        "blocks": (1, 1, 1),  # two convolutions per stage: one block (F, G)
        "norm": ("instance", {"eps": 1e-05, "affine": True}),
        "act": ("leakyrelu", {}),  # in-place dropped
        "dropout": 0.0,
    }
    assert net_options(**arch_kwargs(n_conv_per_stage=[1, 3, 4]))["blocks"] == (1, 2, 2)
    resenc = arch_kwargs(n_conv_per_stage=None, n_blocks_per_stage=[1, 3, 4])
    assert net_options(**resenc)["blocks"] == (1, 3, 4)
    dropout = arch_kwargs(dropout_op=nn.Dropout3d, dropout_op_kwargs={"p": 0.2, "inplace": True})
    assert net_options(**dropout)["dropout"] == 0.2


@pytest.mark.parametrize("name", list(WRAPPERS))
def test_the_wrapped_net_is_the_invseg_net_with_these_options(name: str) -> None:
    net = _build(name, memory="store", blocks=[1, 2, 1])
    assert net.net.channels == (8, 16, 32) and net.net.blocks == (1, 2, 1)
    assert net.memory == "store"
    net.memory = "invert"
    assert net.net.memory == "invert"
    norms = [m for m in net.modules() if isinstance(m, nn.InstanceNorm3d)]
    assert norms and all(m.affine and m.eps == 1e-5 for m in norms)
    acts = [m for m in net.modules() if isinstance(m, nn.LeakyReLU)]
    assert acts and not any(m.inplace for m in acts)
    assert net(torch.randn(2, IN_CHANNELS, 16, 16, 16)).shape == (2, REGIONS, 16, 16, 16)


@pytest.mark.parametrize("train", [True, False])
def test_deep_supervision_returns_every_decoder_stage_full_resolution_first(train: bool) -> None:
    net = _build("partially", deep_supervision=True, **_four_stages()).train(train)
    x = torch.randn(1, IN_CHANNELS, 12, 16, 10)  # padded to 16^3 inside, cropped back
    with torch.no_grad():
        out = net(x)
        # nnU-Net's UNetDecoder returns the list in eval mode too (its validation_step uses it)
        assert [tuple(o.shape[2:]) for o in out] == [(12, 16, 10), (6, 8, 5), (3, 4, 3)]
        torch.testing.assert_close(out[0], net.net(x))  # the full-resolution map is the net's
        net.decoder.deep_supervision = False  # as nnUNetTrainer.set_deep_supervision_enabled
        torch.testing.assert_close(net(x), out[0])


def test_weights_trained_with_deep_supervision_load_into_the_inference_net() -> None:
    trained = _build("partially", deep_supervision=True, **_four_stages())
    predictor = _build("partially", deep_supervision=False, **_four_stages())  # as nnU-Net's
    predictor.load_state_dict(trained.state_dict())  # strict: the heads exist either way
    x = torch.randn(1, IN_CHANNELS, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(predictor(x), trained(x)[0])


def test_one_output_per_loss_weight_at_the_scales_of_the_targets() -> None:
    changes = _four_stages()
    net = _build("partially", deep_supervision=True, **changes)
    patch = (16, 16, 16)
    out = net(torch.randn(1, IN_CHANNELS, *patch))
    strides = changes["strides"]
    scales = 1 / np.cumprod(np.vstack(strides), axis=0)[:-1]  # what DS targets are pooled by
    assert len(out) == len(_ds_weights(strides)) == 3
    assert [list(o.shape[2:]) for o in out] == [[round(p * s) for p, s in zip(patch, sc)]
                                                for sc in scales]  # fmt: skip


def _four_stages() -> dict:
    return {
        "n_stages": 4,
        "features_per_stage": [8, 16, 32, 64],
        "kernel_sizes": [[3, 3, 3]] * 4,
        "strides": [[1, 1, 1]] + [[2, 2, 2]] * 3,
        "n_conv_per_stage": [2] * 4,
        "n_conv_per_stage_decoder": [2] * 3,
    }


@pytest.mark.parametrize("mode", ["invert", "checkpoint"])
def test_gradients_under_the_deep_supervision_loss_equal_store(mode: str) -> None:
    store = _build("partially", True, memory="store", **_four_stages()).double()
    other = _build("partially", True, memory=mode, **_four_stages()).double()
    other.load_state_dict(store.state_dict())
    x = torch.randn(1, IN_CHANNELS, 16, 16, 16, dtype=F64)
    target = (torch.rand(1, REGIONS, 16, 16, 16) > 0.5).double()
    weights = _ds_weights(_four_stages()["strides"])  # [4/7, 2/7, 0]
    grads = []
    for net in (store, other):  # torch's default init: no residual function starts at zero
        out = net(x)
        targets = [target[..., :: 2**k, :: 2**k, :: 2**k] for k in range(len(out))]
        loss = sum(
            w * nn.functional.binary_cross_entropy_with_logits(o, t)
            for w, o, t in zip(weights, out, targets)
            if w != 0  # as nnU-Net's DeepSupervisionWrapper
        )
        loss.backward()
        grads.append({n: p.grad for n, p in net.named_parameters()})
    assert grads[0]["decoder.heads.0.weight"].abs().sum() > 0  # the supervised level 1
    assert grads[0]["decoder.heads.1.weight"] is None  # weight 0: level 2 is left out
    for key, ref in grads[0].items():
        if ref is not None:
            torch.testing.assert_close(grads[1][key], ref, rtol=1e-7, atol=1e-10, msg=key)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2]]}, r"strides\[1\] = \[1, 2, 2\]"),
        ({"strides": [[2, 2, 2], [2, 2, 2], [2, 2, 2]]}, r"strides\[0\] = \[2, 2, 2\]"),
        ({"strides": [[1, 1, 1], [2, 2, 2]]}, r"strides = .*expected 3 entries"),
        ({"kernel_sizes": [[3, 3, 3], [1, 3, 3], [3, 3, 3]]}, r"kernel_sizes\[1\] = \[1, 3, 3\]"),
        ({"conv_op": nn.Conv2d}, r"conv_op = 'Conv2d'.*3D"),
        ({"norm_op": None}, r"norm_op = None"),
        ({"nonlin": nn.Hardswish}, r"nonlin = 'Hardswish'"),
        ({"dropout_op": nn.AlphaDropout}, r"dropout_op = 'AlphaDropout'"),
        ({"n_stages": 1, "features_per_stage": [8]}, r"n_stages = 1"),
        ({"features_per_stage": [8, 16]}, r"features_per_stage = \[8, 16\]"),
    ],
)
def test_what_the_nets_cannot_run_is_refused_naming_the_plans_entry(change, message) -> None:
    with pytest.raises(ValueError, match=r"architecture\.arch_kwargs\." + message):
        _build("partially", **change)


def test_unknown_arguments_and_odd_widths_are_refused() -> None:
    with pytest.raises(TypeError, match=r"arch_kwargs\.nonlin_frist\. Did you mean 'nonlin_"):
        _build("partially", nonlin_frist=True)
    with pytest.raises(TypeError, match="anchor_every"):
        _build("fully", anchor_every=2)  # Partially's key
    with pytest.raises(ValueError, match="even channels"):
        _build("partially", features_per_stage=[8, 15, 32])


def test_fully_refuses_deep_supervision_and_says_what_to_do() -> None:
    with pytest.raises(ValueError, match="nnUNetTrainerNoDeepSupervision"):
        _build("fully", deep_supervision=True)
    net = _build("fully")
    net.decoder.deep_supervision = True  # nnUNetTrainer does this after its final validation
    with pytest.raises(ValueError, match="no deep supervision yet"):
        net(torch.randn(1, IN_CHANNELS, 8, 8, 8))
    net.decoder.deep_supervision = False
    assert net(torch.randn(1, IN_CHANNELS, 8, 8, 8)).shape == (1, REGIONS, 8, 8, 8)


def _he_std(conv: nn.Module) -> float:
    fan_in = conv.weight.shape[1] * math.prod(conv.weight.shape[2:])  # as torch's kaiming
    return math.sqrt(2 / (1 + 1e-2**2)) / math.sqrt(fan_in)


@pytest.mark.parametrize("name", list(WRAPPERS))
def test_initialize_zeroes_residual_ends_and_he_initialises_the_rest(name: str) -> None:
    net = _build(name, **({"deep_supervision": True} if name == "partially" else {}))
    net.apply(net.initialize)
    convs = {id(m): m for m in net.modules() if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d))}
    ends = residual_ends(net)
    couplings = [m for m in net.modules() if isinstance(m, AdditiveCoupling)]
    assert len(ends) == 2 * len(couplings) > 0
    for key, conv in convs.items():
        assert not conv.bias.any()
        if key in ends:
            assert not conv.weight.any()
        elif conv.weight.numel() >= 256:  # enough weights to estimate their spread
            assert conv.weight.std().item() == pytest.approx(_he_std(conv), rel=0.2)
    # the rule does not depend on the order of the visit (apply: children first)
    parents_first = _build(name)
    for module in parents_first.modules():
        parents_first.initialize(module)
    zeroed = {
        n for n, p in parents_first.named_parameters() if n.endswith("weight") and not p.any()
    }
    assert zeroed == {n for n, p in net.named_parameters() if n.endswith("weight") and not p.any()}


@pytest.mark.parametrize("name", list(WRAPPERS))
def test_after_initialize_the_forward_is_finite_and_the_stages_invert(name: str) -> None:
    net = _build(name)
    net.apply(net.initialize)
    x = torch.randn(2, IN_CHANNELS, 16, 16, 16)
    out = net(x)
    assert torch.isfinite(out).all() and out.abs().sum() > 0
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.99)  # nnU-Net's SGD
    for _ in range(2):
        opt.zero_grad()
        net(x).square().mean().backward()
        opt.step()
    if name == "partially":
        stages = [*zip(net.net.encoder, net.net.channels), (net.net.bottom, net.net.channels[-1])]
    else:
        stages = [(net.net.body, net.net.channels[0])]
    with torch.no_grad():
        for stage, channels in stages:
            h = torch.randn(2, channels, 16, 16, 16)
            y = stage(h)
            assert (y - h).abs().max() > 1e-3  # the couplings left the identity
            torch.testing.assert_close(stage.inverse(y), h, rtol=0, atol=1e-5)


# Dynamo itself touches .grad of non-leaf tensors while tracing (a torch-internal warning).
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf")
@pytest.mark.parametrize("name", list(WRAPPERS))
def test_torch_compile_gives_the_same_outputs_and_gradients(name: str) -> None:
    net = _build(
        name,
        deep_supervision=name == "partially",
        n_stages=2,
        features_per_stage=[4, 8],
        kernel_sizes=3,
        strides=[1, 2],
        n_conv_per_stage=2,
        n_conv_per_stage_decoder=2,
    )
    x = torch.randn(1, IN_CHANNELS, 8, 8, 8, requires_grad=True)  # fmt: skip
    compiled = torch.compile(net, backend="aot_eager")  # as nnUNetTrainer.initialize, CPU backend

    def grads(model: nn.Module) -> list[torch.Tensor]:
        out = model(x)
        outs = out if isinstance(out, list) else [out]
        return torch.autograd.grad(sum(o.square().sum() for o in outs), [x, *net.parameters()])

    for ref, got in zip(grads(net), grads(compiled)):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    compiled._orig_mod.decoder.deep_supervision = False  # set_deep_supervision_enabled(False)
    assert isinstance(compiled(x), torch.Tensor)
