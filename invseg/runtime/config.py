"""One typed config for every command: YAML file + defaults + ``--set key=value`` overrides.

A config is a dataclass with one dataclass per section (:class:`Section`). Every field carries
its type and its bounds; :func:`load` reads YAML 1.2 (``3e-4`` is a float), fills the defaults,
applies overrides and coerces every value once. An error names the key path, the value and what
is allowed::

    train.batch_size: 'two' is not an integer
    train.batch_size: 0 must be >= 1
    data.crop: 16 must be a list of 3 integers
    unknown config key 'train.lrr'. Did you mean 'lr'?

Tasks declare their schemas (:mod:`invseg.tasks.config`); this module knows no task. Sections
are read by attribute (``cfg.train.lr``); :meth:`Section.to_dict` gives plain data.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from invseg._choices import did_you_mean
from invseg.runtime.coerce import ConfigError, coerce, field

__all__ = [
    "ConfigError",
    "Section",
    "field",
    "find_config",
    "instantiate_model",
    "key_hint",
    "list_configs",
    "load",
    "model_arguments",
    "parse_overrides",
    "yaml_dump",
    "yaml_load",
]

T = TypeVar("T")

#: Folder of the configs shipped inside the package (``invseg train NAME`` finds them).
PACKAGED = Path(__file__).resolve().parent.parent / "configs"


class _DuplicateKey(Exception):
    """A mapping that repeats a key (raised by :class:`_Loader`, reported by :func:`yaml_load`)."""

    def __init__(self, key: Any, line: int, first: int) -> None:
        super().__init__(key, line, first)
        self.key, self.line, self.first = key, line, first


class _Loader(yaml.SafeLoader):
    """YAML safe loader that reads ``1e-4`` (no dot) as a float, as YAML 1.2 does, and refuses a
    key given twice in one mapping (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # ``<<: *base`` may be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise _DuplicateKey(key, line, seen[key])
                seen[key] = line
            except TypeError:  # an unhashable key: PyYAML's own error follows
                continue
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def yaml_load(text: str, *, source: str | Path | None = None) -> Any:
    """Parse YAML like :func:`yaml.safe_load`, with ``3e-4`` read as a float.

    Args:
        text: the YAML text.
        source: the file it came from (named in errors).

    Raises:
        ConfigError: a mapping gives a key twice (one line naming the file, key and line).
        yaml.YAMLError: invalid YAML.

    Example:
        >>> yaml_load("lr: 3e-4")["lr"]
        0.0003
        >>> yaml_load("lr: 1\\nlr: 2", source="c.yaml")
        Traceback (most recent call last):
        ...
        invseg.runtime.coerce.ConfigError: c.yaml: duplicate key 'lr' at line 2 (first at line 1)
    """
    try:
        return yaml.load(text, Loader=_Loader)
    except _DuplicateKey as dup:
        where = f"{source}: " if source is not None else ""
        raise ConfigError(
            f"{where}duplicate key {dup.key!r} at line {dup.line} (first at line {dup.first})"
        ) from None


def yaml_dump(obj: Any) -> str:
    """YAML text of plain data (sections are turned into dicts), keys in their given order."""
    return yaml.safe_dump(to_plain(obj), sort_keys=False)


class Section:
    """Base of config sections: dataclasses read by attribute (``cfg.train.lr``).

    A section is not a mapping: ``cfg["train"]`` raises :class:`TypeError` saying so.
    :meth:`to_dict` is the one way to plain data (YAML, checkpoints, ``--set`` merging).

    Example:
        >>> from dataclasses import dataclass
        >>> @dataclass
        ... class Train(Section):
        ...     lr: float = 0.1
        >>> Train().lr, Train().to_dict()
        (0.1, {'lr': 0.1})
        >>> Train()["lr"]
        Traceback (most recent call last):
        ...
        TypeError: Train is read by attribute: write .lr, not ['lr']
    """

    def __getitem__(self, key: object) -> Any:
        name = type(self).__name__
        if isinstance(key, str):
            raise TypeError(f"{name} is read by attribute: write .{key}, not [{key!r}]")
        raise TypeError(f"{name} is read by attribute, not by index; to_dict() gives a dict")

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dicts/lists/scalars (what YAML and ``torch.save`` store)."""
        return to_plain(self)

    @classmethod
    def build(cls: type[T], raw: Mapping[str, Any] | None, path: str) -> T:
        """Coerce a mapping into this section; unknown keys get a did-you-mean error."""
        raw = {} if raw is None else raw
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{path}: {raw!r} must be a section (a mapping)")
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        for key in raw:
            if key not in fields:
                raise ConfigError(
                    f"unknown config key '{path}.{key}'." + key_hint(str(key), list(fields))
                )
        values: dict[str, Any] = {}
        for name, f in fields.items():
            if name not in raw:
                continue
            tp, sub = hints[name], f"{path}.{name}"
            if isinstance(tp, type) and issubclass(tp, Section):
                values[name] = tp.build(raw[name], sub)
            else:
                values[name] = coerce(raw[name], tp, sub, f.metadata)
        out = cls(**values)
        check = getattr(out, "check", None)
        if check is not None:
            check(path)
        return out


def key_hint(key: str, choices: Sequence[str]) -> str:
    """`` Did you mean ...?`` for an unknown key, else the list of valid keys."""
    return did_you_mean(key, choices) or f" Valid keys: {', '.join(choices)}."


def to_plain(obj: Any) -> Any:
    """Sections and tuples turned into dicts and lists, recursively."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj


# ------------------------------------------------------------------------------------ loading
def parse_overrides(overrides: Sequence[str]) -> list[tuple[list[str], Any]]:
    """``["train.lr=3e-4"]`` -> ``[(["train", "lr"], 0.0003)]``; values are YAML 1.2.

    Raises:
        ConfigError: an item without ``=`` or with an invalid YAML value.

    Example:
        >>> parse_overrides(["train.lr=3e-4", "data.crop=[8, 8, 8]"])
        [(['train', 'lr'], 0.0003), (['data', 'crop'], [8, 8, 8])]
    """
    out = []
    for item in overrides:
        key, sep, raw = str(item).partition("=")
        key = key.strip()
        if not sep or not key or "" in key.split("."):
            raise ConfigError(f"override '{item}' must look like key=value, e.g. train.lr=3e-4.")
        try:
            value = yaml_load(raw) if raw.strip() else None
        except yaml.YAMLError as err:
            raise ConfigError(f"override '{item}': the value is not valid YAML.") from err
        out.append((key.split("."), value))
    return out


def _apply(raw: dict[str, Any], keys: list[str], value: Any, schema: type) -> None:
    node, cls = raw, schema
    for depth, part in enumerate(keys[:-1]):
        dotted = ".".join(keys[: depth + 1])
        names = [f.name for f in dataclasses.fields(cls)] if cls is not None else None
        if names is not None and part not in names:
            raise ConfigError(f"unknown config key '{dotted}'." + key_hint(part, names))
        child = node.setdefault(part, {})
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override '{'.'.join(keys)}': '{dotted}' is a value, not a section.")
        sub = typing.get_type_hints(cls).get(part) if cls is not None else None
        node, cls = (
            child,
            (sub if isinstance(sub, type) and dataclasses.is_dataclass(sub) else None),
        )
    node[keys[-1]] = value


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML config file (a path, or the name of a packaged config)."""
    path = find_config(path)
    try:
        raw = yaml_load(path.read_text(), source=path)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML ({' '.join(str(err).split())}).") from err
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path}: the config must be a YAML mapping of sections.")
    return dict(raw)


def load(
    schema: type[T], source: str | Path | Mapping[str, Any], overrides: Sequence[str] = ()
) -> T:
    """Read a config into ``schema``: file or mapping, defaults, overrides, coercion, checks.

    Args:
        schema: a :class:`Section` dataclass whose fields are the sections.
        source: YAML file, packaged config name (``invseg config list``) or a mapping.
        overrides: ``key=value`` strings with dotted keys.

    Raises:
        ConfigError: missing file, invalid YAML, unknown key, bad value.
    """
    raw = copy.deepcopy(dict(source)) if isinstance(source, Mapping) else read_yaml(source)
    raw = to_plain(raw)
    for keys, value in parse_overrides(overrides):
        _apply(raw, keys, value, schema)
    names = [f.name for f in dataclasses.fields(schema)]  # type: ignore[arg-type]
    for key in raw:
        if key not in names:
            raise ConfigError(f"unknown config key '{key}'." + key_hint(str(key), names))
    hints = typing.get_type_hints(schema)
    values = {}
    for name in names:
        tp = hints[name]
        if isinstance(tp, type) and issubclass(tp, Section):
            values[name] = tp.build(raw.get(name), name)
        else:
            values[name] = coerce(raw[name], tp, name) if name in raw else None
    values = {k: v for k, v in values.items() if v is not None}
    cfg = schema(**values)
    check = getattr(cfg, "check", None)
    if check is not None:
        check("")
    return cfg


def list_configs() -> dict[str, str]:
    """Packaged config names with the first comment line of each file.

    Example:
        >>> "demo" in list_configs()
        True
    """
    out = {}
    for path in sorted(PACKAGED.glob("*.yaml")):
        first = path.read_text().splitlines()[:1]
        out[path.stem] = first[0].lstrip("# ").strip() if first else ""
    return out


def find_config(name: str | Path) -> Path:
    """A config file: an existing path, else a packaged config by name (``brats_fully_invres``).

    Raises:
        ConfigError: neither a file nor a packaged name (with a did-you-mean hint).

    Example:
        >>> find_config("demo").name
        'demo.yaml'
    """
    path = Path(name).expanduser()
    if path.is_file():
        return path
    stem = path.name[:-5] if path.name.endswith(".yaml") else path.name
    packaged = PACKAGED / f"{stem}.yaml"
    if path.parent in (Path("."), Path("configs")) and packaged.is_file():
        return packaged
    names = list(list_configs())
    raise ConfigError(
        f"config file '{name}' does not exist and is no packaged config name "
        f"({', '.join(names)}).{did_you_mean(stem, names)}"
    )


def model_arguments(model: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(registered name, arguments)`` of a ``model`` section, checked as plain data.

    ``_target_`` names a network of the registry (:func:`invseg.nets.list_models`): a short name
    (``UNet3D``) or its full public path (``invseg.nets.UNet3D``,
    ``monai.networks.nets.SegResNet``). Every other key is an argument of that class and holds
    plain data (:func:`invseg.nets.registry.check_arguments`): nothing named in a config is
    imported, no ``$`` expression is evaluated.

    Raises:
        ConfigError: ``_target_`` missing or unknown (with a did-you-mean hint), or an argument
            that the class does not take or that does not fit it (``model.<key>: ...``).

    Example:
        >>> model_arguments({"_target_": "invseg.nets.UNet3D", "channels": [4, 8]})
        ('UNet3D', {'channels': [4, 8]})
        >>> model_arguments({"_target_": "UNet3D", "chanels": [4, 8]})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        invseg.runtime.coerce.ConfigError: model.chanels: not an argument of UNet3D. Did you ...
    """
    from invseg.nets import registry

    target = model.get("_target_")
    if target is None:
        raise ConfigError(
            "model._target_ is missing: name the network, e.g. 'invseg.nets.PartiallyInvResUNet' "
            f"(one of {', '.join(registry.list_models())})."
        )
    name = registry.canonical_name(str(target))
    if name is None:
        names = registry.list_models()
        hint = did_you_mean(str(target).rsplit(".", 1)[-1], names) or f" Known: {', '.join(names)}."
        raise ConfigError(f"model._target_: '{target}' is not a network invseg knows.{hint}")
    kwargs = {k: v for k, v in model.items() if k != "_target_"}
    try:
        registry.check_arguments(name, kwargs, "model")
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return name, kwargs


def instantiate_model(model: Mapping[str, Any]) -> Any:
    """Build the network of a ``model`` section: :func:`invseg.nets.create` on the name and
    arguments of :func:`model_arguments` (checked as plain data first).

    Raises:
        ConfigError: an unknown network or argument, or the class rejects the arguments
            (``cannot build model <_target_>: <its own message>``).

    Example:
        >>> net = instantiate_model({"_target_": "invseg.nets.UNet3D", "in_channels": 1,
        ...                          "out_channels": 2, "channels": [4, 8]})
        >>> type(net).__name__, net.channels
        ('UNet3D', (4, 8))
    """
    from invseg.nets import registry

    name, kwargs = model_arguments(model)
    try:
        return registry.create(name, **copy.deepcopy(kwargs))
    except (TypeError, ValueError, RuntimeError) as err:
        why = " ".join(str(err).split()) or type(err).__name__
        raise ConfigError(f"cannot build model {model['_target_']}: {why}") from err
