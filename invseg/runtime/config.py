"""Segmentation run configs: YAML file + defaults + ``--set key=value`` overrides.

A config has five sections. Every hyper-parameter of a run lives here; the CLI only chooses the
file and applies overrides.

.. code-block:: yaml

    data:   {root: ..., layout: null, convention: brats, spacing: [1, 1, 1], crop: [128, 128, 128],
             val_fraction: 0.2, val_cases: null, cache_rate: 0.0}
    model:  {_target_: invseg.nets.PartiallyInvResUNet, in_channels: 4, out_channels: 3, ...}
    train:  {epochs: 100, steps: null, batch_size: 1, lr: 1.0e-4, ...}
    infer:  {roi_size: [128, 128, 128], sw_batch_size: 1, overlap: 0.5, tta: false}
    output: {dir: runs/brats}

Keys of ``data``, ``train``, ``infer`` and ``output`` are checked against :data:`DEFAULTS`; keys of
``model`` against the signature of its ``_target_`` class.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from invseg._choices import did_you_mean

__all__ = ["DEFAULTS", "ConfigError", "apply_overrides", "load_config", "resolve_target"]

#: Every key a config may contain (``model`` aside), with its default.
DEFAULTS: dict[str, dict[str, Any]] = {
    "data": {
        "root": None,  # dataset folder as the challenge ships it
        "layout": None,  # auto-detected when null
        "convention": "brats",  # brats | brats2023 | msd | iseg
        "spacing": [1.0, 1.0, 1.0],  # mm, resampling target
        "crop": [128, 128, 128],  # training patch (D, H, W)
        "num_samples": 1,  # crops per loaded volume
        "augment": True,
        "val_fraction": 0.2,  # used when val_cases is null
        "val_cases": None,  # explicit list of validation case ids
        "cache_rate": 0.0,  # fraction of cases cached after the deterministic transforms
    },
    "model": {"_target_": "invseg.nets.PartiallyInvResUNet"},
    "train": {
        "epochs": 100,  # passes over the training cases (ignored when steps is set)
        "steps": None,  # optimizer steps; overrides epochs when set
        "max_minutes": None,  # wall-clock budget; stops cleanly with a checkpoint
        "batch_size": 1,  # per process (global batch = batch_size x world size)
        "accumulation": 1,  # micro-batches per optimizer step
        "optimizer": "adamw",  # adamw | adam | sgd
        "lr": 1.0e-4,
        "weight_decay": 1.0e-5,
        "momentum": 0.99,  # sgd only
        "scheduler": "cosine",  # cosine | poly | constant
        "warmup_steps": 0,
        "grad_clip": None,  # max gradient norm
        "amp": True,  # bf16 autocast on CPU, fp16 + GradScaler on CUDA
        "seed": 0,
        "deterministic": True,
        "val_every": 1,  # epochs between validations
        "checkpoint_every": None,  # optimizer steps between "last" checkpoints (and each epoch)
        "num_workers": 2,
        "device": "auto",  # auto | cpu | cuda | cuda:N
        "measure_memory": True,  # print activation bytes of one training forward at start
        "progress": True,  # tqdm bars on rank 0
        "loss": {"dice": 1.0, "ce": 1.0, "vae": 1.0},
    },
    "infer": {"roi_size": [128, 128, 128], "sw_batch_size": 1, "overlap": 0.5, "tta": False},
    "output": {"dir": "runs/invseg"},
}


class _Loader(yaml.SafeLoader):
    """YAML 1.1 safe loader that also reads ``1e-4`` (no dot) as a float, as YAML 1.2 does."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def yaml_load(text: str) -> Any:
    """Parse YAML like :func:`yaml.safe_load`, with ``3e-4`` read as a float.

    Example:
        >>> yaml_load("lr: 3e-4")["lr"]
        0.0003
    """
    return yaml.load(text, Loader=_Loader)


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message says how to fix it."""


def _did_you_mean(key: str, choices: Sequence[str]) -> str:
    return did_you_mean(key, choices) or f" Valid keys: {', '.join(choices)}."


def resolve_target(target: str) -> Any:
    """Import the object named by a full dotted path such as ``invseg.nets.UNet3D``.

    Raises:
        ConfigError: the module or attribute does not exist.

    Example:
        >>> resolve_target("torch.nn.Identity").__name__
        'Identity'
    """
    module_name, _, attr = str(target).rpartition(".")
    if not module_name:
        raise ConfigError(
            f"model._target_ '{target}' must be a full dotted path, e.g. "
            "'invseg.nets.PartiallyInvResUNet'."
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(
            f"model._target_ '{target}': cannot import '{module_name}' ({err})."
        ) from err
    if not hasattr(module, attr):
        names = [n for n in dir(module) if not n.startswith("_")]
        raise ConfigError(
            f"model._target_ '{target}': '{module_name}' has no '{attr}'."
            + _did_you_mean(attr, names)
        )
    return getattr(module, attr)


def _model_keys(model: Mapping[str, Any]) -> list[str] | None:
    """Keyword names accepted by the model class, or None when it takes ``**kwargs``."""
    target = model.get("_target_")
    if target is None:
        raise ConfigError(
            "model._target_ is missing: name the network class by its full dotted "
            "path, e.g. 'invseg.nets.PartiallyInvResUNet'."
        )
    cls = resolve_target(target)
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return ["_target_", *params]


def _check_keys(cfg: Mapping[str, Any], ref: Mapping[str, Any], prefix: str) -> None:
    for key, value in cfg.items():
        if key not in ref:
            raise ConfigError(
                f"unknown config key '{prefix}{key}'." + _did_you_mean(key, list(ref))
            )
        if isinstance(ref[key], dict) and isinstance(value, Mapping):
            _check_keys(value, ref[key], f"{prefix}{key}.")


def _merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict) and key != "model":
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def validate(cfg: Mapping[str, Any]) -> None:
    """Check every key of ``cfg`` against :data:`DEFAULTS` and the model signature.

    Raises:
        ConfigError: unknown key (with a did-you-mean hint) or a missing section.
    """
    _check_keys({k: v for k, v in cfg.items() if k != "model"}, DEFAULTS, "")
    model = cfg.get("model")
    if not isinstance(model, Mapping):
        raise ConfigError("config section 'model' is missing: give at least model._target_.")
    keys = _model_keys(model)
    if keys is not None:
        for key in model:
            if key not in keys:
                raise ConfigError(
                    f"unknown config key 'model.{key}' for {model['_target_']}."
                    + _did_you_mean(key, keys)
                )


def apply_overrides(cfg: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``key=value`` overrides with dotted keys; values are parsed as YAML.

    Args:
        cfg: a config (not modified).
        overrides: e.g. ``["train.lr=3e-4", "data.crop=[64,64,64]", "model.vae=true"]``.

    Returns:
        A new config dict.

    Raises:
        ConfigError: malformed override or unknown key (with a did-you-mean hint).

    Example:
        >>> cfg = {"train": {"lr": 1.0e-4}, "model": {"_target_": "torch.nn.Identity"}}
        >>> apply_overrides(cfg, ["train.lr=0.01"])["train"]["lr"]
        0.01
    """
    out = copy.deepcopy(dict(cfg))
    for item in overrides:
        key, sep, raw = str(item).partition("=")
        key = key.strip()
        if not sep or not key or "" in key.split("."):
            raise ConfigError(f"override '{item}' must look like key=value, e.g. train.lr=3e-4.")
        try:
            value = yaml_load(raw) if raw.strip() else None
        except yaml.YAMLError as err:
            raise ConfigError(f"override '{item}': the value is not valid YAML.") from err
        *parents, leaf = key.split(".")
        node: dict[str, Any] = out
        ref: Any = DEFAULTS
        for depth, part in enumerate(parents):
            if isinstance(ref, dict) and parents[0] != "model" and part not in ref:
                dotted = ".".join(parents[: depth + 1])
                raise ConfigError(
                    f"unknown config key '{dotted}'." + _did_you_mean(part, list(ref))
                )
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                dotted = ".".join(parents[: depth + 1])
                raise ConfigError(f"override '{item}': '{dotted}' is a value, not a section.")
            node, ref = child, (ref.get(part) if isinstance(ref, dict) else None)
        if isinstance(ref, dict) and (not parents or parents[0] != "model") and leaf not in ref:
            raise ConfigError(f"unknown config key '{key}'." + _did_you_mean(leaf, list(ref)))
        node[leaf] = value
    return out


def load_config(
    path: str | Path | Mapping[str, Any], overrides: Sequence[str] = ()
) -> dict[str, Any]:
    """Read a YAML config, fill in :data:`DEFAULTS`, apply overrides and validate every key.

    Args:
        path: YAML file, or an already-loaded mapping.
        overrides: ``key=value`` strings (see :func:`apply_overrides`).

    Returns:
        The resolved config as plain dicts/lists/scalars.

    Raises:
        ConfigError: missing file, invalid YAML, unknown key.

    Example:
        >>> cfg = load_config({"model": {"_target_": "torch.nn.Identity"}}, ["train.lr=0.5"])
        >>> cfg["train"]["lr"], cfg["infer"]["overlap"]
        (0.5, 0.5)
    """
    if isinstance(path, Mapping):
        raw: Any = copy.deepcopy(dict(path))
    else:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(
                f"config file '{path}' does not exist; pass a YAML file such as "
                "configs/brats_partially_invres.yaml."
            )
        try:
            raw = yaml_load(path.read_text())
        except yaml.YAMLError as err:
            msg = str(err).replace("\n", " ")
            raise ConfigError(f"{path}: invalid YAML ({msg}).") from err
    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"{path}: the config must be a YAML mapping with sections "
            "data, model, train, infer, output."
        )
    _check_keys({k: v for k, v in raw.items() if k != "model"}, DEFAULTS, "")
    cfg = _merge(DEFAULTS, raw)
    cfg = apply_overrides(cfg, overrides)
    validate(cfg)
    return cfg


def instantiate_model(model_cfg: Mapping[str, Any]) -> Any:
    """Build the network described by a ``model`` section with :class:`monai.bundle.ConfigParser`.

    Args:
        model_cfg: ``{"_target_": "full.dotted.Class", **kwargs}``.

    Raises:
        ConfigError: the class cannot be found or rejects the arguments.

    Example:
        >>> instantiate_model({"_target_": "torch.nn.Conv3d", "in_channels": 1,
        ...                    "out_channels": 2, "kernel_size": 1}).out_channels
        2
    """
    from monai.bundle import ConfigParser

    target = model_cfg.get("_target_")
    resolve_target(str(target))
    try:
        return ConfigParser({"model": copy.deepcopy(dict(model_cfg))}).get_parsed_content("model")
    except (TypeError, ValueError, RuntimeError) as err:
        msg = " ".join(str(err).split())
        raise ConfigError(f"cannot build model {target}: {msg}") from err
