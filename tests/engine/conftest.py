"""Small invertible chains shared by the engine tests."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from invseg.engine import AdditiveCoupling, InvertibleSequential


def residual(channels: int, dropout: float = 0.0) -> nn.Module:
    """norm -> act -> (dropout) -> conv on ``channels``, the residual function of a coupling."""
    return nn.Sequential(
        nn.GroupNorm(1, channels),
        nn.LeakyReLU(0.1),
        nn.Dropout(dropout),
        nn.Conv3d(channels, channels, 3, padding=1),
    )


def make_chain(depth: int, channels: int = 4, *, dropout: float = 0.0, **kwargs) -> nn.Module:
    return InvertibleSequential(
        *[AdditiveCoupling(residual(channels // 2, dropout)) for _ in range(depth)], **kwargs
    )


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
