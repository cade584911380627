"""The network registry: names, plain-data checks, signature checks; nothing is imported."""

from __future__ import annotations

import pytest

from invseg.nets import FullyInvResUNet, PartiallyInvResUNet, UNet3D
from invseg.nets.registry import (
    canonical_name,
    check_arguments,
    check_plain,
    create,
    full_name,
    list_models,
    model_class,
)


@pytest.mark.parametrize("cls", [UNet3D, PartiallyInvResUNet, FullyInvResUNet])
def test_invseg_networks_by_short_and_full_name(cls) -> None:
    assert cls.__name__ in list_models()
    assert model_class(cls.__name__) is model_class(f"invseg.nets.{cls.__name__}") is cls
    assert full_name(cls) == f"invseg.nets.{cls.__name__}"


def test_monai_networks_by_name() -> None:
    from monai.networks.nets import SegResNet

    assert model_class("monai.networks.nets.SegResNet") is SegResNet
    assert full_name(SegResNet) == "monai.networks.nets.SegResNet"
    net = create("SegResNet", spatial_dims=3, in_channels=1, out_channels=2, init_filters=8)
    assert isinstance(net, SegResNet)


def test_a_monai_network_outside_monai_networks_nets_keeps_its_importable_path() -> None:
    from monai.networks.nets.unet import CheckpointUNet

    path = "monai.networks.nets.unet.CheckpointUNet"  # not exported by monai.networks.nets
    assert model_class("CheckpointUNet") is model_class(path) is CheckpointUNet
    assert full_name(CheckpointUNet) == path and canonical_name(path) == "CheckpointUNet"
    assert canonical_name("monai.networks.nets.CheckpointUNet") is None


@pytest.mark.parametrize(
    "name", ["os.system", "invseg.nets.registry.create", "monai.networks.nets.DenseNet121",
             "builtins.eval", "torch.nn.Conv3d", "invseg.nets.UNet3D.__init__"],
)  # fmt: skip
def test_names_outside_the_registry_are_refused(name) -> None:
    assert canonical_name(name) is None
    with pytest.raises(ValueError, match="is not a network invseg knows"):
        model_class(name)


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("$print(1)", "is an expression"),
        ("@net", "is a reference"),
        ("%file.json#x", "is a macro"),
        ({"_target_": "os.system"}, "is not a plain argument name"),
        ([1, [2, {"a": "$x"}]], "x[1][1].a"),
        (object(), "a object is not a plain value"),
        ("x" * 5000, "characters"),
        (list(range(5000)), "items"),
    ],
)
def test_check_plain_names_the_offending_path(value, words) -> None:
    with pytest.raises(ValueError, match="^x") as info:
        check_plain(value, "x")
    assert words in str(info.value)


def test_plain_values_pass() -> None:
    check_plain({"channels": [4, 8], "norm": ["group", {"num_groups": 2}], "p": None}, "k")


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"channels": "four"}, "kwargs.channels: 'four' does not fit"),
        ({"in_channels": 2.5}, "kwargs.in_channels: 2.5 does not fit"),
        ({"dropout": "high"}, "kwargs.dropout"),
        ({"chanels": [4, 8]}, "not an argument of UNet3D. Did you mean 'channels'"),
        ({"lift": True}, "not an argument of UNet3D"),
    ],
)
def test_arguments_are_checked_against_the_signature(kwargs, words) -> None:
    with pytest.raises(ValueError) as info:
        check_arguments("UNet3D", kwargs, "kwargs")
    assert words in str(info.value)


def test_lists_stand_for_tuples_and_the_net_builds() -> None:
    kwargs = {"in_channels": 2, "out_channels": 3, "channels": [4, 8],
              "norm": ["group", {"num_groups": 2}], "memory": "invert"}  # fmt: skip
    check_arguments("PartiallyInvResUNet", kwargs, "kwargs")
    net = create("PartiallyInvResUNet", **kwargs)
    assert net.memory == "invert"
