"""The frame every net shares: one signature with each net's own arguments, one memory switch."""

from __future__ import annotations

import inspect
import typing

import pytest

from invseg.engine import InvertibleSequential
from invseg.nets import FullyInvResUNet, PartiallyInvResUNet, UNet3D
from invseg.nets.registry import check_arguments

SHARED = [
    "spatial_dims", "in_channels", "out_channels", "channels", "blocks", "act", "norm",
    "dropout", "memory", "vae", "input_image_size", "vae_weights", "deep_supervision", "strides",
]  # fmt: skip
NETS = [
    (UNet3D, "store", []),
    (PartiallyInvResUNet, "invert", ["anchor_every"]),
    (FullyInvResUNet, "invert", ["lift"]),
]


@pytest.mark.parametrize(("cls", "memory", "own"), NETS, ids=lambda v: getattr(v, "__name__", v))
def test_signature_lists_the_shared_arguments_then_the_nets_own(cls, memory, own) -> None:
    params = inspect.signature(cls).parameters
    assert list(params) == SHARED + own
    assert params["memory"].default == memory
    assert params["channels"].default == (16, 32, 64, 128) and params["spatial_dims"].default == 3
    kinds = [p.kind for p in params.values()]
    assert kinds[:3] == [inspect.Parameter.POSITIONAL_OR_KEYWORD] * 3
    assert set(kinds[3:]) == {inspect.Parameter.KEYWORD_ONLY}
    assert set(typing.get_type_hints(cls.__init__)) == set(SHARED + own)


def test_registry_checks_each_nets_own_arguments_by_type() -> None:
    check_arguments("PartiallyInvResUNet", {"anchor_every": 1, "memory": "store"}, "kwargs")
    check_arguments("FullyInvResUNet", {"lift": True}, "kwargs")
    with pytest.raises(ValueError, match="kwargs.lift: 'yes' does not fit"):
        check_arguments("FullyInvResUNet", {"lift": "yes"}, "kwargs")
    with pytest.raises(ValueError, match="kwargs.anchor_every: 1.5 does not fit"):
        check_arguments("PartiallyInvResUNet", {"anchor_every": 1.5}, "kwargs")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"chanels": (4, 8)}, r"^UNet3D: got an unexpected keyword .*'chanels'.*'channels'\?$"),
        ({"lift": True}, r"^UNet3D: got an unexpected keyword argument 'lift'\.$"),
    ],
)
def test_unknown_argument_names_the_net(kwargs, match) -> None:
    with pytest.raises(TypeError, match=match):
        UNet3D(3, 2, 3, **kwargs)


def test_positional_arguments_stop_after_out_channels() -> None:
    with pytest.raises(TypeError, match="^PartiallyInvResUNet: too many positional"):
        PartiallyInvResUNet(3, 2, 3, (8, 16))


@pytest.mark.parametrize("cls", [UNet3D, PartiallyInvResUNet, FullyInvResUNet])
def test_memory_is_checked_normalised_and_shown(cls) -> None:
    net = cls(3, 2, 3, channels=(8, 16), memory="Checkpoint")
    assert net.memory == "checkpoint" and "memory='checkpoint'" in repr(net)
    with pytest.raises(ValueError, match="Did you mean 'store'"):
        net.memory = "stor"
    assert net.memory == "checkpoint"  # a refused mode changes nothing


def test_unet3d_reads_invert_as_store() -> None:
    net = UNet3D(3, 2, 3, channels=(8, 16), memory="invert")
    assert net.memory == "store"


@pytest.mark.parametrize("cls", [PartiallyInvResUNet, FullyInvResUNet])
def test_memory_switches_every_invertible_chain(cls) -> None:
    net = cls(3, 2, 3, channels=(8, 16), memory="store")
    chains = [m for m in net.modules() if type(m) is InvertibleSequential]
    assert {c.memory for c in chains} == {"store"}
    net.memory = "invert"
    outer = chains if cls is PartiallyInvResUNet else [net.body]
    assert {c.memory for c in outer} == {"invert"}
