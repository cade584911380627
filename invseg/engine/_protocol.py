"""The invertible-block protocol and argument checks shared by the engine."""

from __future__ import annotations

from torch import nn

MEMORY_MODES: tuple[str, ...] = ("invert", "checkpoint", "store")


def is_invertible(module: object) -> bool:
    """Whether ``module`` follows the invertible protocol.

    A block is invertible when it is an :class:`torch.nn.Module` with ``forward(x, *context)``
    and ``inverse(y, *context)``. The check is structural; numerical invertibility is tested
    with :func:`invseg.engine.testing.assert_round_trip`.

    Example:
        >>> from invseg.engine import AdditiveCoupling
        >>> is_invertible(AdditiveCoupling(nn.Conv3d(2, 2, 3, padding=1)))
        True
        >>> is_invertible(nn.Conv3d(2, 2, 3))
        False
    """
    return isinstance(module, nn.Module) and callable(getattr(module, "inverse", None))


def check_block(block: object, index: int) -> nn.Module:
    """Raise a clear ``TypeError`` unless ``block`` follows the invertible protocol."""
    if not isinstance(block, nn.Module):
        raise TypeError(
            f"block {index} is a {type(block).__name__}, not an nn.Module; "
            "InvertibleSequential takes invertible nn.Modules only."
        )
    if not is_invertible(block):
        raise TypeError(
            f"block {index} ({type(block).__name__}) has no inverse(); only invertible blocks "
            "(forward(x, *context) and inverse(y, *context)) can be chained. Wrap plain layers "
            "in AdditiveCoupling or keep them outside the chain."
        )
    return block
