"""Typed config values: dataclass fields with bounds and the coercion of one value to its type.

:func:`coerce` turns a YAML value into the annotated type of a config field, or raises a
:class:`ConfigError` naming the key path, the value and what is allowed.

Example:
    >>> coerce("3e-4", float, "train.lr")
    0.0003
    >>> coerce([8, 8], list[int], "data.crop", {"length": 3})
    Traceback (most recent call last):
    ...
    invseg.runtime.coerce.ConfigError: data.crop: [8, 8] must be a list of 3 integers
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal

from invseg._choices import did_you_mean

__all__ = ["ConfigError", "coerce", "field"]


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message says how to fix it."""


class _BoundError(ConfigError):
    """A value of the right type outside its bounds (preferred over type errors in unions)."""


def field(default: Any, **bounds: Any) -> Any:
    """A dataclass field with bounds: ``ge``, ``gt``, ``le``, ``lt``, ``length``, ``finite``.

    A ``float`` field refuses ``.inf`` and ``.nan`` unless it opts in with ``finite=False``
    (no shipped field does: a budget or a rate of infinity is spelled ``null`` or is a typo).

    Example:
        >>> from invseg.runtime.config import Section
        >>> @dataclasses.dataclass
        ... class S(Section):
        ...     n: int = field(1, ge=1)
        >>> S.build({"n": "two"}, "s")
        Traceback (most recent call last):
        ...
        invseg.runtime.coerce.ConfigError: s.n: 'two' is not an integer
    """
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=bounds)
    return dataclasses.field(default=default, metadata=bounds)


# ------------------------------------------------------------------------------------ coercion
def _fail(path: str, value: Any, what: str) -> ConfigError:
    return ConfigError(f"{path}: {value!r} {what}")


def _literal(value: Any, choices: tuple, path: str) -> Any:
    if value in choices and not isinstance(value, bool):
        return value
    names = [str(c) for c in choices]
    if isinstance(value, (str, int, float)) and str(value).lower() in [n.lower() for n in names]:
        return choices[[n.lower() for n in names].index(str(value).lower())]
    hint = did_you_mean(value, names)
    raise _fail(path, value, f"is not allowed; choose {' | '.join(names)}.{hint}")


def _scalar(value: Any, tp: Any, path: str) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _fail(path, value, "must be true or false")
    if tp is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _fail(path, value, "is not an integer")
    if tp is float:
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:  # an integer beyond the float range
                raise _fail(path, value, "must be a finite number") from None
            except ValueError:
                pass
        raise _fail(path, value, "is not a number")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise _fail(path, value, "is not a string")
    return value  # Any


def _describe(tp: Any) -> str:
    return {int: "integers", float: "numbers", str: "strings", bool: "booleans"}.get(tp, "values")


def coerce(value: Any, tp: Any, path: str, meta: Mapping[str, Any] | None = None) -> Any:
    """Coerce ``value`` to the annotation ``tp``; raise :class:`ConfigError` naming ``path``."""
    meta = meta or {}
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise _fail(path, value, "must be set (null is not allowed)")
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, path, meta)
            except _BoundError:
                raise
            except ConfigError as err:
                errors.append(err)
        raise errors[-1] if len(errors) == 1 else _union_error(value, args, path, meta)
    if origin is Literal:
        return _literal(value, typing.get_args(tp), path)
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        n = meta.get("length")
        what = f"a list of {n} {_describe(item)}" if n else f"a list of {_describe(item)}"
        if not isinstance(value, (list, tuple)) or (n is not None and len(value) != n):
            raise _fail(path, value, f"must be {what}")
        return [coerce(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise _fail(path, value, "must be a mapping")
        _, vt = typing.get_args(tp) or (str, Any)
        return {str(k): coerce(v, vt, f"{path}.{k}") for k, v in value.items()}
    if value is None:
        raise _fail(path, value, "must be set (null is not allowed)")
    out = _scalar(value, tp, path)
    if tp is float and meta.get("finite", True) and not math.isfinite(out):
        raise _BoundError(
            f"{path}: {out!r} must be a finite number (.inf and .nan are not allowed)"
        )
    _check_bounds(out, path, meta)
    return out


def _union_error(value: Any, args: tuple, path: str, meta: Mapping[str, Any]) -> ConfigError:
    names = []
    for a in args:
        if a is type(None):
            names.append("null")
        elif typing.get_origin(a) is Literal:
            names.extend(repr(c) for c in typing.get_args(a))
        elif typing.get_origin(a) is list:
            n = meta.get("length")
            names.append(
                f"a list of {n or ''} {_describe(typing.get_args(a)[0])}".replace("  ", " ")
            )
        else:
            names.append(getattr(a, "__name__", str(a)))
    return _fail(path, value, f"must be {' or '.join(names)}")


def _check_bounds(value: Any, path: str, meta: Mapping[str, Any]) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    for key, op, ok in (
        ("ge", ">=", lambda a, b: a >= b),
        ("gt", ">", lambda a, b: a > b),
        ("le", "<=", lambda a, b: a <= b),
        ("lt", "<", lambda a, b: a < b),
    ):
        if key in meta and not ok(value, meta[key]):
            raise _BoundError(f"{path}: {value!r} must be {op} {meta[key]}")


# ------------------------------------------------------------------------------------ sections
