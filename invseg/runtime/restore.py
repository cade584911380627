"""Networks and training state rebuilt from a checkpoint, reading the file as data.

* :func:`load_model`: a segmentation checkpoint -> its network in eval mode and its
  :class:`~invseg.runtime.checkpoint.RunMeta`; :func:`build_model` builds a described network
  from the registry (:mod:`invseg.nets.registry`) after checking its arguments as plain data;
  :func:`model_for_weights` builds it on the ``meta`` device first, so a description that asks
  for an enormous network is refused before anything is allocated;
* :func:`check_weights` / :func:`load_weights`: names, shapes, stored (not viewed) and finite;
* :func:`restore_training`: weights, optimizer, scheduler, scaler and RNG states of a
  ``--resume``, each failure one line naming the checkpoint's field; :func:`check_same_model`:
  the checkpoint describes the network this run builds.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from invseg.nets.registry import check_plain
from invseg.runtime.checkpoint import RunMeta, load_checkpoint, restore_rng
from invseg.runtime.config import ConfigError, key_hint

__all__ = [
    "build_model",
    "check_same_model",
    "check_weights",
    "import_class",
    "load_model",
    "load_weights",
    "model_for_weights",
    "restore_training",
]


def import_class(path: str) -> Any:
    """The class a *user* names by its full dotted path (``--model-class``), imported.

    The one place invseg imports code by a name; the name never comes from a checkpoint or a
    config (those name registered networks, :mod:`invseg.nets.registry`).

    Raises:
        ConfigError: not a dotted path, or the module or attribute does not exist.

    Example:
        >>> import_class("torch.nn.Identity").__name__
        'Identity'
    """
    module_name, _, attr = str(path).rpartition(".")
    if not module_name:
        raise ConfigError(
            f"--model-class '{path}' must be a full dotted path, e.g. 'mypackage.nets.MyNet'."
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(
            f"--model-class '{path}': cannot import '{module_name}' ({err})."
        ) from err
    if not hasattr(module, attr):
        names = [n for n in dir(module) if not n.startswith("_")]
        raise ConfigError(
            f"--model-class '{path}': '{module_name}' has no '{attr}'." + key_hint(attr, names)
        )
    return getattr(module, attr)


def build_model(
    target: str, kwargs: Mapping[str, Any], *, model_class: str | None = None, path: str = "meta"
) -> nn.Module:
    """Build ``target(**kwargs)`` from a checkpoint's description, checked as data first.

    ``target`` must be a registered network (:func:`invseg.nets.registry.list_models`) unless
    the user passes ``model_class``; ``kwargs`` must be plain values that fit the signature.

    Raises:
        ValueError: ``"<path>.target: ..."`` / ``"<path>.kwargs.<key>: ..."``, one line.
    """
    from invseg.nets import registry

    if model_class is None and registry.canonical_name(target) is None:
        raise ValueError(
            f"{path}.target: '{target}' is not a network invseg knows "
            f"({', '.join(registry.list_models()[:3])}, MONAI's ...); a checkpoint cannot name "
            "code to import. If you trust this file, name the class yourself with "
            f"--model-class {target}"
        )
    check_plain(dict(kwargs), f"{path}.kwargs")
    if model_class is None:
        registry.check_arguments(target, kwargs, f"{path}.kwargs")
        cls = registry.model_class(target)
    else:
        cls = import_class(model_class)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError, RuntimeError, AssertionError) as err:
        why = " ".join(str(err).split()) or type(err).__name__
        raise ValueError(f"{path}.kwargs: {cls.__name__} refused them ({why})") from None


def check_weights(
    model: nn.Module,
    state: Mapping[str, Any],
    *,
    source: str | Path,
    hint: str = "was the model config changed?",
) -> None:
    """Raise one line unless ``state`` fits ``model`` (names, shapes) with finite, real weights.

    Each tensor must own the storage its shape needs (a stride-0 view of one number does not
    pass for a huge weight), and floating-point weights must be finite. ``model`` may live on
    the ``meta`` device: nothing is allocated for it.

    Raises:
        ValueError: missing, unexpected or differently shaped keys; non-finite weights.

    Example:
        >>> check_weights(  # doctest: +ELLIPSIS
        ...     nn.Linear(2, 3), nn.Linear(2, 4).state_dict(), source="x.pt")
        Traceback (most recent call last):
        ...
        ValueError: x.pt: the weights do not fit the model (shape differs: weight [4, 2] vs...
    """
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        needed = value.numel() * value.element_size()
        if value.numel() and (
            not value.is_contiguous() or value.untyped_storage().nbytes() < needed
        ):
            raise ValueError(f"{source}: model.{key}: a view, not a stored tensor of its shape.")
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shape = [
        f"{k} {list(state[k].shape)} vs {list(v.shape)}"
        for k, v in own.items()
        if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(v.shape)
    ]
    parts = []
    for name, keys in (("missing", missing), ("unexpected", unexpected), ("shape differs", shape)):
        if keys:
            more = f", ... ({len(keys)} in all)" if len(keys) > 4 else ""
            parts.append(f"{name}: {', '.join(keys[:4])}{more}")
    if parts:
        raise ValueError(f"{source}: the weights do not fit the model ({'; '.join(parts)}); {hint}")
    for key, value in state.items():
        if (
            isinstance(value, torch.Tensor)
            and value.is_floating_point()
            and not bool(torch.isfinite(value).all())
        ):
            raise ValueError(
                f"{source}: model.{key} holds NaN or infinite weights; this checkpoint "
                "cannot be used (was it saved from a diverged run?)."
            )


def load_weights(model: nn.Module, state: Mapping[str, Any], *, source: str | Path) -> None:
    """``model.load_state_dict(state)`` after :func:`check_weights` (one line if they do not fit).

    Raises:
        ValueError: missing, unexpected or differently shaped keys; non-finite weights.
    """
    check_weights(model, state, source=source)
    model.load_state_dict(state)


def model_for_weights(
    build: Callable[[], nn.Module],
    state: Mapping[str, Any],
    *,
    source: str | Path,
    hint: str = "was the model config changed?",
) -> nn.Module:
    """``build()`` with ``state`` loaded, checked on a ``meta`` skeleton before any allocation.

    The network is first built on the ``meta`` device (no memory), the weights are checked
    against it (:func:`check_weights`), and only then built for real and loaded, so a file
    whose description asks for an enormous network is refused without allocating it.

    Raises:
        ValueError: ``"<source>: ..."``, one line.
    """
    try:
        with torch.device("meta"):
            skeleton = build()
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None
    check_weights(skeleton, state, source=source, hint=hint)
    model = build()
    model.load_state_dict(state)
    return model


def load_model(
    checkpoint: str | Path,
    *,
    device: str | torch.device = "cpu",
    model_class: str | None = None,
) -> tuple[nn.Module, RunMeta]:
    """Rebuild the network stored in a segmentation checkpoint, reading the file as data.

    The file is loaded with ``weights_only=True``; its ``meta`` names a registered network
    and plain arguments (:func:`build_model`): nothing it names is imported or evaluated.

    Args:
        checkpoint: ``best.pt`` / ``last.pt`` of ``invseg train`` (or ``invseg bundle import``).
        device: where the model goes.
        model_class: dotted class path the user trusts, for a network outside the registry.

    Returns:
        ``(model in eval mode on device, meta)``.

    Raises:
        ValueError: not an invseg checkpoint, a description that is not plain data or not a
            known network, weights that do not fit it or are not finite; one line naming the
            file and the field.
    """
    ckpt = load_checkpoint(checkpoint, map_location="cpu")
    meta = RunMeta.from_dict(ckpt.get("meta"), source=checkpoint)
    model = model_for_weights(
        lambda: meta.build_model(model_class=model_class), ckpt["model"], source=checkpoint
    )
    dev = torch.device(device) if isinstance(device, str) else device
    return model.to(dev).eval(), meta


def _field(source: str | Path, name: str, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``; a failure is one line naming the checkpoint's field ``name``."""
    try:
        return fn(*args)
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as err:
        why = " ".join(str(err).split())[:120] or type(err).__name__
        raise ValueError(
            f"{source}: {name}: cannot be restored ({why}); the checkpoint is damaged or was "
            "not written by this run."
        ) from None


def restore_training(
    ckpt: Mapping[str, Any],
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    source: str | Path,
) -> tuple[int, int, int]:
    """Put a checkpoint's weights, optimizer, scheduler, scaler and RNG states in place.

    Returns:
        ``(epoch, step, batch_in_epoch)``.

    Raises:
        ValueError: ``"<source>: <field>: ..."``, one line, for a field that does not fit.
    """
    load_weights(model, ckpt["model"], source=source)
    _field(source, "optimizer", optimizer.load_state_dict, ckpt.get("optimizer"))
    if scheduler is not None and ckpt.get("scheduler"):
        _field(source, "scheduler", scheduler.load_state_dict, ckpt["scheduler"])
    if scaler is not None and ckpt.get("scaler"):
        _field(source, "scaler", scaler.load_state_dict, ckpt["scaler"])
    _field(source, "rng", restore_rng, ckpt.get("rng"))
    epoch, step, batch = (
        _field(source, key, int, ckpt.get(key)) for key in ("epoch", "step", "batch_in_epoch")
    )
    return epoch, step, batch


def check_same_model(saved: Any, own: Mapping[str, Any] | None, *, source: str | Path) -> None:
    """The checkpoint's ``meta`` names the network (target, arguments) this run builds.

    Nothing in ``saved`` is built or evaluated: it is only compared.

    Raises:
        ConfigError: ``"<source>: meta.<key> ... differs from this run's model"``.
    """
    if not own:
        return
    saved = saved if isinstance(saved, Mapping) else {}
    for key in ("target", "kwargs"):
        if saved.get(key) != own.get(key):
            theirs = repr(saved.get(key))
            theirs = theirs if len(theirs) <= 60 else theirs[:57] + "..."
            raise ConfigError(
                f"{source}: meta.{key} {theirs} differs from this run's model "
                f"({own.get('target')}); resume with the config the run was trained with, or "
                "start a new run folder (-o DIR)."
            )
