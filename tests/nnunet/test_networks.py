"""The nnU-Net-signature wrappers: arguments, refusals, init, compile (deep supervision and
strides: test_deep_supervision.py)."""

from __future__ import annotations

import math

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


def test_plans_arguments_become_the_nets_options() -> None:
    options = net_options(**arch_kwargs())
    assert options == {
        "channels": (8, 16, 32),
        "blocks": (1, 1, 1),  # two convolutions per stage: one block (F, G)
        "strides": ((2, 2, 2), (2, 2, 2)),  # the plans' strides[1:], one per down-sampling
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


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"strides": [2, 2, 2]}, r"strides\[0\] = 2: invseg's nets need \[1, 1, 1\]"),
        ({"strides": [[1, 1, 1], [1, 1, 1], [2, 2, 2]]}, r"strides\[1\] = \[1, 1, 1\]: .*one 2"),
        ({"strides": [[1, 1, 1], [2, 2, 2], 3]}, r"strides\[2\] = 3: .*by 1 or 2 per axis"),
        ({"strides": [[1, 1, 1], [2, 2], [2, 2, 2]]}, r"strides\[1\] = \[2, 2\]: "),
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


def _he_std(conv: nn.Module) -> float:
    fan_in = conv.weight.shape[1] * math.prod(conv.weight.shape[2:])  # as torch's kaiming
    return math.sqrt(2 / (1 + 1e-2**2)) / math.sqrt(fan_in)


@pytest.mark.parametrize("name", list(WRAPPERS))
def test_initialize_zeroes_residual_ends_and_he_initialises_the_rest(name: str) -> None:
    net = _build(name, deep_supervision=True)
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
    heads = list(net.net.supervision_heads)  # nnU-Net He-initialises its seg layers too
    assert len(heads) == 1 and not any(id(h) in ends for h in heads)
    spread = torch.cat([(h.weight / _he_std(h)).flatten() for h in heads])  # 3 x 16 weights
    assert spread.std().item() == pytest.approx(1.0, rel=0.3)
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
        deep_supervision=True,
        n_stages=3,
        features_per_stage=[4, 8, 16],
        kernel_sizes=3,
        strides=[1, [1, 2, 2], 2],
        n_conv_per_stage=2,
        n_conv_per_stage_decoder=2,
    )
    x = torch.randn(1, IN_CHANNELS, 4, 8, 8, requires_grad=True)
    compiled = torch.compile(net, backend="aot_eager")  # as nnUNetTrainer.initialize, CPU backend

    def grads(model: nn.Module) -> list[torch.Tensor]:
        out = model(x)
        assert [tuple(o.shape[2:]) for o in out] == [(4, 8, 8), (4, 4, 4)]
        return torch.autograd.grad(sum(o.square().sum() for o in out), [x, *net.parameters()])

    for ref, got in zip(grads(net), grads(compiled)):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    compiled._orig_mod.decoder.deep_supervision = False  # set_deep_supervision_enabled(False)
    assert isinstance(compiled(x), torch.Tensor)
