"""Networks by name: the one list of classes that a checkpoint may ask invseg to build.

A checkpoint written by someone else is data. What it may say about its network is a *name*
from this registry and *plain* arguments (numbers, strings, booleans, ``None``, lists and
string-keyed dicts of those), checked against the class's signature before anything is built.
Nothing is imported by a dotted path read from a file, nothing is evaluated: MONAI's config
syntax (``$`` expressions, ``@`` references, ``%`` macros, ``_target_`` entries) has no meaning
in a checkpoint and is refused.

Names are the invseg networks (``UNet3D``, ``PartiallyInvResUNet``, ``FullyInvResUNet``) and a
fixed list of MONAI segmentation networks (``SegResNet``, ``DynUNet``, ...); the full public
paths (``invseg.nets.FullyInvResUNet``, ``monai.networks.nets.SegResNet``), which checkpoints
store, name the same classes. A config's ``model._target_`` is one of these names too
(:func:`invseg.runtime.config.instantiate_model`), and so is every entry of the benchmark zoo.

Example:
    >>> net = create("PartiallyInvResUNet", in_channels=4, out_channels=3, channels=[4, 8])
    >>> type(net).__name__, canonical_name("invseg.nets.PartiallyInvResUNet")
    ('PartiallyInvResUNet', 'PartiallyInvResUNet')
    >>> check_arguments(  # doctest: +ELLIPSIS
    ...     "UNet3D", {"channels": "$__import__('os')"}, "meta.kwargs")
    Traceback (most recent call last):
    ...
    ValueError: meta.kwargs.channels: '$__import__(...' is an expression; a checkpoint holds...
"""

from __future__ import annotations

import collections.abc
import inspect
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal

from torch import nn

from invseg._choices import did_you_mean

__all__ = [
    "MONAI_NETWORKS",
    "canonical_name",
    "check_arguments",
    "check_plain",
    "create",
    "full_name",
    "list_models",
    "model_class",
]

#: MONAI segmentation networks a checkpoint may name (constructors that download nothing).
MONAI_NETWORKS = (
    "AttentionUnet",
    "BasicUNet",
    "CheckpointUNet",
    "DynUNet",
    "HighResNet",
    "SegResNet",
    "SegResNetDS",
    "SegResNetVAE",
    "SwinUNETR",
    "UNETR",
    "UNet",
    "VNet",
)
_INVSEG_PREFIX, _MONAI_PREFIX = "invseg.nets.", "monai.networks.nets."
#: MONAI networks defined in a module but not exported by ``monai.networks.nets``.
_MONAI_MODULES = {"CheckpointUNet": "unet"}
_MAX_ITEMS, _MAX_DEPTH, _MAX_TEXT = 4096, 8, 4096


def _invseg_classes() -> dict[str, type[nn.Module]]:
    from invseg.nets.fully import FullyInvResUNet
    from invseg.nets.partially import PartiallyInvResUNet
    from invseg.nets.unet3d import UNet3D

    return {c.__name__: c for c in (FullyInvResUNet, PartiallyInvResUNet, UNet3D)}


def list_models() -> list[str]:
    """Names :func:`create` accepts: invseg's networks first, then MONAI's.

    Example:
        >>> list_models()[:3]
        ['FullyInvResUNet', 'PartiallyInvResUNet', 'UNet3D']
    """
    return [*sorted(_invseg_classes()), *MONAI_NETWORKS]


def _path(short: str) -> str:
    """The full public path of a registered name (``monai.networks.nets.unet.CheckpointUNet``)."""
    if short in _invseg_classes():
        return _INVSEG_PREFIX + short
    module = _MONAI_MODULES.get(short)
    return _MONAI_PREFIX + (f"{module}." if module else "") + short


def canonical_name(name: str) -> str | None:
    """The registry name for ``name`` (short or full public path), or ``None`` if unknown.

    Example:
        >>> canonical_name("monai.networks.nets.SegResNet"), canonical_name("os.system")
        ('SegResNet', None)
    """
    name = str(name)
    names = list_models()
    if name in names:
        return name
    return next((short for short in names if _path(short) == name), None)


def full_name(cls: type) -> str | None:
    """The full public path of a registered class (what a checkpoint stores), else ``None``.

    Example:
        >>> from invseg.nets import FullyInvResUNet
        >>> full_name(FullyInvResUNet)
        'invseg.nets.FullyInvResUNet'
    """
    for name in list_models():
        if model_class(name) is cls:
            return _path(name)
    return None


def model_class(name: str) -> type[nn.Module]:
    """The class registered as ``name`` (short name or full public path).

    Raises:
        ValueError: not a registered network (with the list and a did-you-mean hint).
    """
    short = canonical_name(name)
    if short is None:
        names = list_models()
        hint = did_you_mean(str(name).rsplit(".", 1)[-1], names) or f" Known: {', '.join(names)}."
        raise ValueError(f"'{name}' is not a network invseg knows.{hint}")
    invseg_classes = _invseg_classes()
    if short in invseg_classes:
        return invseg_classes[short]
    import monai.networks.nets as monai_nets

    module = _MONAI_MODULES.get(short)
    return getattr(getattr(monai_nets, module) if module else monai_nets, short)


def create(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered network ``name`` from plain ``kwargs`` (checked first).

    Raises:
        ValueError: unknown name, or arguments that are not plain data or not in the signature.
    """
    check_arguments(name, kwargs, "kwargs")
    return model_class(name)(**kwargs)


# ------------------------------------------------------------------------------------ checks
def check_plain(value: Any, path: str, depth: int = 0) -> None:
    """Raise :class:`ValueError` naming ``path`` unless ``value`` is plain, inert data.

    Plain: ``None``, booleans, finite or infinite numbers, strings that do not start with
    ``$``/``@``/``%``, and lists / string-keyed dicts of those (no ``_target_``-like keys),
    at most 8 levels deep and 4096 items per container.
    """
    if depth > _MAX_DEPTH:
        raise ValueError(f"{path}: nested more than {_MAX_DEPTH} levels deep")
    if value is None or isinstance(value, (bool, int, float)):
        return
    if isinstance(value, str):
        if value[:1] in ("$", "@", "%"):
            text = value if len(value) <= 16 else value[:12] + "..."
            raise ValueError(
                f"{path}: '{text}' is {_SYNTAX[value[0]]}; a checkpoint holds plain values "
                "and nothing in it is evaluated"
            )
        if len(value) > _MAX_TEXT:
            raise ValueError(f"{path}: a string of {len(value)} characters is not an argument")
        return
    if isinstance(value, (list, tuple)):
        _check_size(value, path)
        for i, item in enumerate(value):
            check_plain(item, f"{path}[{i}]", depth + 1)
        return
    if isinstance(value, Mapping):
        _check_size(value, path)
        for key, item in value.items():
            if not isinstance(key, str) or key.startswith("_"):
                raise ValueError(f"{path}: key {key!r} is not a plain argument name")
            check_plain(item, f"{path}.{key}", depth + 1)
        return
    raise ValueError(f"{path}: a {type(value).__name__} is not a plain value")


_SYNTAX = {"$": "an expression", "@": "a reference", "%": "a macro"}


def _check_size(value: Any, path: str) -> None:
    if len(value) > _MAX_ITEMS:
        raise ValueError(f"{path}: {len(value)} items is not an argument")


def check_arguments(name: str, kwargs: Mapping[str, Any], path: str) -> None:
    """Check ``kwargs`` for the registered class ``name`` without building it.

    Every value is plain (:func:`check_plain`), every key is a parameter of the class, and
    every value fits the parameter's annotation where one is given (lists stand for tuples).

    Raises:
        ValueError: ``"<path>.<key>: ..."``, one line.
    """
    cls = model_class(name)
    if not isinstance(kwargs, Mapping):
        raise ValueError(f"{path}: {type(kwargs).__name__} is not a mapping of arguments")
    check_plain(dict(kwargs), path)
    params = inspect.signature(cls).parameters
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # annotations that do not evaluate: check names only
        hints = {}
    names = [n for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    open_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
    for key, value in kwargs.items():
        if key not in names:
            if open_kwargs:
                continue
            hint = did_you_mean(key, names) or f" Its arguments: {', '.join(names)}."
            raise ValueError(f"{path}.{key}: not an argument of {cls.__name__}.{hint}")
        if key in hints and not _fits(value, hints[key]):
            raise ValueError(
                f"{path}.{key}: {_short(value)} does not fit {cls.__name__}'s "
                f"'{_describe(hints[key])}'"
            )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _describe(hint: Any) -> str:
    return str(hint).replace("typing.", "").replace("collections.abc.", "")


_SEQUENCES = (list, tuple, collections.abc.Sequence, collections.abc.Iterable)


def _fits(value: Any, hint: Any) -> bool:
    """Whether a plain value can stand for an argument annotated ``hint`` (lenient)."""
    if hint is Any or hint is inspect.Parameter.empty:
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if hint is type(None):
        return value is None
    if origin is Literal:
        return value in args
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    if hint in _SEQUENCES or origin in _SEQUENCES:
        if not isinstance(value, (list, tuple)):
            return False
        item = args[0] if len(args) == 1 or (len(args) == 2 and args[1] is Ellipsis) else None
        if item is not None:
            return all(_fits(v, item) for v in value)
        if args and len(args) == len(value):
            return all(_fits(v, a) for v, a in zip(value, args, strict=True))
        return not args
    if hint is dict or origin in (dict, collections.abc.Mapping) or hint is Mapping:
        return isinstance(value, Mapping)
    if isinstance(hint, type):  # a class (dtype, module, ...): a plain value is never one
        return isinstance(value, hint)
    return True
