"""Validation of string options with a did-you-mean hint, shared by every subpackage."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def closest(value: object, choices: Iterable[str]) -> str | None:
    """The choice closest to ``value``, or ``None`` when none is close."""
    close = difflib.get_close_matches(str(value), list(choices), n=1)
    return close[0] if close else None


def did_you_mean(value: object, choices: Iterable[str]) -> str:
    """``" Did you mean 'x'?"`` for the closest choice, or ``""`` when none is close.

    Example:
        >>> did_you_mean("invertt", ["invert", "store"])
        " Did you mean 'invert'?"
    """
    match = closest(value, choices)
    return f" Did you mean {match!r}?" if match else ""


def check_option(
    name: str, value: object, choices: Iterable[str], *, error: type[Exception] = ValueError
) -> str:
    """Return the choice matching ``value`` (case-insensitive), else raise a did-you-mean error.

    Args:
        name: what the option is called in messages (e.g. ``"memory"``).
        value: the value given by the user.
        choices: the valid spellings; the matching one is returned.
        error: the exception class for an unknown value (a ``ValueError`` subclass).

    Raises:
        TypeError: if ``value`` is not a string.
        ValueError: (or ``error``) if ``value`` is not a choice.

    Example:
        >>> check_option("memory", "Store", ("invert", "checkpoint", "store"))
        'store'
    """
    choices = list(choices)
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, one of {choices}; got {type(value).__name__}.")
    by_lower = {c.lower(): c for c in choices}
    if value.lower() in by_lower:
        return by_lower[value.lower()]
    match = closest(value.lower(), by_lower)
    hint = f" Did you mean {by_lower[match]!r}?" if match else ""
    raise error(f"unknown {name} {value!r}; choose one of {', '.join(map(repr, choices))}.{hint}")
