"""The invertible residual block of the InvRes U-Nets (and its plain residual twin)."""

from __future__ import annotations

from torch import Tensor, nn

from invseg.engine import AdditiveCoupling
from invseg.nets._layers import DEFAULT_ACT, DEFAULT_NORM, check_act, check_norm, norm_act_conv


class InvertibleResBlock(AdditiveCoupling):
    r"""Invertible residual block: an additive coupling of two pre-activation conv units.

    The channels are split in halves :math:`x = (x_1, x_2)` and

    .. math::
        y_1 = x_1 + F(x_2), \qquad y_2 = x_2 + G(y_1),
        \qquad F, G = \mathrm{conv}_{k^3} \circ \mathrm{act} \circ \mathrm{norm}

    on ``channels / 2`` channels each, so the inverse is exact:
    :math:`x_2 = y_2 - G(y_1),\ x_1 = y_1 - F(x_2)`. Inside an
    :class:`invseg.engine.InvertibleSequential` with ``memory="invert"`` its activations are
    not stored; backward rebuilds the input (the engine's fused RevNet pass). It is an ordinary
    ``nn.Module`` with MONAI's argument names and can be used in any MONAI network.

    Args:
        channels: number of channels (even).
        spatial_dims: number of spatial dimensions (3).
        act: activation name or ``(name, kwargs)`` for MONAI's ``Act`` factory.
        norm: normalisation name or ``(name, kwargs)``; group norm uses
            ``gcd(num_groups, channels / 2)`` groups if ``num_groups`` does not divide
            ``channels / 2``.
        dropout: dropout probability before each conv (replayed exactly by the engine).
        kernel_size: convolution kernel size (odd).

    Shape:
        ``(B, channels, D, H, W)`` in and out.

    Raises:
        ValueError: if ``channels`` is odd or not positive, or ``kernel_size`` is even.

    Example:
        >>> import torch
        >>> block = InvertibleResBlock(8).double()
        >>> x = torch.randn(1, 8, 6, 6, 6, dtype=torch.float64)
        >>> torch.allclose(block.inverse(block(x)), x)
        True
    """

    def __init__(
        self,
        channels: int,
        *,
        spatial_dims: int = 3,
        act: str | tuple = DEFAULT_ACT,
        norm: str | tuple = DEFAULT_NORM,
        dropout: float = 0.0,
        kernel_size: int = 3,
    ) -> None:
        if not isinstance(channels, int) or channels < 2 or channels % 2:
            raise ValueError(
                f"InvertibleResBlock splits its channels into two halves, so channels must be an "
                f"even int >= 2; got {channels!r}. Use an even number of channels."
            )
        f, g = unit_pair(channels // 2, spatial_dims, act, norm, dropout, kernel_size)
        super().__init__(f, g, split_dim=1)
        self.channels = channels


class ResidualBlock(nn.Module):
    r"""Plain pre-activation residual block :math:`y = x + G(F(x))` (not invertible).

    ``F`` and ``G`` are the same ``norm -> act -> conv`` units as in
    :class:`InvertibleResBlock`, but on all ``channels``: the classic residual 3D U-Net block.

    Args:
        channels: number of channels.
        spatial_dims: number of spatial dimensions (3).
        act: activation name or ``(name, kwargs)``.
        norm: normalisation name or ``(name, kwargs)``.
        dropout: dropout probability before each conv.
        kernel_size: convolution kernel size (odd).

    Shape:
        ``(B, channels, D, H, W)`` in and out.

    Example:
        >>> import torch
        >>> ResidualBlock(4)(torch.randn(2, 4, 5, 5, 5)).shape
        torch.Size([2, 4, 5, 5, 5])
    """

    def __init__(
        self,
        channels: int,
        *,
        spatial_dims: int = 3,
        act: str | tuple = DEFAULT_ACT,
        norm: str | tuple = DEFAULT_NORM,
        dropout: float = 0.0,
        kernel_size: int = 3,
    ) -> None:
        super().__init__()
        self.f, self.g = unit_pair(channels, spatial_dims, act, norm, dropout, kernel_size)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.g(self.f(x))


def unit_pair(
    channels: int,
    spatial_dims: int,
    act: str | tuple,
    norm: str | tuple,
    dropout: float,
    kernel_size: int,
) -> tuple[nn.Module, nn.Module]:
    """The ``F`` and ``G`` of a residual block: two ``norm -> act -> conv`` units on ``channels``.

    Raises:
        ValueError: for an even ``kernel_size`` or an unknown ``act``/``norm``.
    """
    if kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd ('same' padding), got {kernel_size}.")
    check_act(act)
    check_norm(norm)
    kw = {"spatial_dims": spatial_dims, "act": act, "norm": norm, "dropout": dropout}
    return (
        norm_act_conv(channels, kernel_size=kernel_size, **kw),
        norm_act_conv(channels, kernel_size=kernel_size, **kw),
    )
