"""Tiny network factories shared by the tests of invseg.nets."""

from __future__ import annotations

import pytest
import torch

from invseg.nets import FullyInvResUNet, PartiallyInvResUNet, UNet3D

CHANNELS = (8, 16, 32)
NETS = {"unet3d": UNet3D, "partially": PartiallyInvResUNet, "fully": FullyInvResUNet}
INVERTIBLE = ("partially", "fully")


def _make_net(name: str, memory: str | None = None, **kwargs) -> torch.nn.Module:
    """A tiny 2 -> 3 channel network; ``memory`` is ignored for UNet3D."""
    kwargs.setdefault("channels", CHANNELS)
    if memory is not None and name != "unet3d":
        kwargs["memory"] = memory
    return NETS[name](3, 2, 3, **kwargs)


@pytest.fixture
def make_net():
    """Factory ``make_net(name, memory=None, **kwargs)`` of tiny networks."""
    return _make_net


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
