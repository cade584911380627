r"""Move weights between ``invseg train`` checkpoints and the MONAI bundle in configs/bundle_brats.

Both sides store the same ``state_dict``: an invseg checkpoint (``best.pt``/``last.pt``) keeps it
under the key ``"model"`` next to the optimizer, RNG states and a ``"meta"`` description of the
network (see :mod:`invseg.runtime.checkpoint`); the bundle loads weights with
:func:`load_bundle_weights` (``weights_only=True``; the ``"model"`` entry or a bare
``state_dict``), so it accepts an invseg checkpoint as it is *and* a bare ``state_dict`` in
``models/model.pt`` (the model-zoo convention); a refused file is one line, not a traceback.

* :func:`export_to_bundle`: invseg checkpoint -> ``<bundle>/models/model.pt`` plus the
  ``python -m monai.bundle run`` overrides that rebuild the same network.
* :func:`import_from_bundle`: bundle weights -> an invseg checkpoint that ``invseg predict``
  (:func:`invseg.commands.predict.predict`) reads.
* :func:`case_name_formatter`: ``SaveImaged(output_name_formatter=...)`` that names predictions
  ``<case_id>.nii.gz`` like ``invseg predict`` does.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from invseg.nets.registry import check_plain, full_name, model_class
from invseg.runtime.checkpoint import RunMeta, load_checkpoint, load_weights_only, save_checkpoint
from invseg.runtime.restore import build_model, model_for_weights

__all__ = [
    "case_name_formatter",
    "export_to_bundle",
    "import_from_bundle",
    "load_bundle_weights",
    "read_weights",
]

_LAYOUT_OF = {"brats": "brats2020", "brats2023": "brats2023"}
#: Network arguments the bundle's ``inference.json``/``train.json`` expose as top-level ids.
_NET_IDS = ("channels", "blocks", "memory")


def _case_id(path: str | Path) -> str:
    from invseg.data.layouts import match_file
    from invseg.data.naming import split_ext

    stem = split_ext(path)[0]
    hit = match_file(stem)
    return hit.case_id if hit is not None else stem


def _modalities(convention: str) -> list[str]:
    from invseg.data.layouts import get_layout

    name = _LAYOUT_OF.get(convention)
    return list(get_layout(name).modalities) if name else []


def read_weights(path: str | Path) -> dict[str, Any]:
    """The ``state_dict`` in a weights file: bare, or under ``"model"`` (invseg, MONAI saver).

    Loaded with ``torch.load(weights_only=True)``: a file that pickles Python objects is
    refused and nothing in it runs.

    Raises:
        ValueError: missing or unreadable file, one line.

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "model.pt"
        >>> torch.save({"model": {"w": torch.ones(2)}}, path)
        >>> read_weights(path)["w"].tolist()
        [1.0, 1.0]
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"bundle weights file '{path}' does not exist.")
    state = load_weights_only(path)
    if isinstance(state, Mapping) and "model" in state and isinstance(state["model"], Mapping):
        state = state["model"]
    if not isinstance(state, Mapping):
        raise ValueError(f"{path}: holds a {type(state).__name__}, not a state_dict.")
    return dict(state)


def _load_into(model: torch.nn.Module, state: Mapping[str, Any], path: Path | str) -> Any:
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise ValueError(
            f"{path}: weights do not fit the bundle's network_def ({first}); pass the "
            "overrides the bundle was run with (channels, blocks, ...)."
        ) from None
    return model


def _raw(parser: Any, key: str, path: str) -> Any:
    """The raw config value at ``key``, ``"@id"`` references followed, checked as plain data.

    A bundle config handed over by someone else is read, not run: ``$`` expressions are
    refused, nothing is instantiated.
    """
    value, seen = parser[key], {key}
    while isinstance(value, str) and value.startswith("@") and value[1:] not in seen:
        seen.add(value[1:])
        value = parser[value[1:]] if value[1:] in parser else value
    try:
        check_plain(value, path)
    except ValueError as err:
        raise ValueError(f"bundle config: {err}") from None
    return value


def _network_def(parser: Any) -> tuple[str, dict[str, Any]]:
    """``(target, kwargs)`` of ``network_def`` as data: ``@id`` references followed, nothing run."""
    from invseg.nets.registry import canonical_name

    net_cfg = dict(parser["network_def"])
    target = str(net_cfg.get("_target_"))
    if canonical_name(target) is None:
        raise ValueError(
            f"bundle config: network_def#_target_ '{target}' is not a network invseg knows."
        )
    kwargs = {
        key: _raw(parser, f"network_def#{key}", f"network_def#{key}")
        for key in net_cfg
        if key != "_target_"
    }
    return target, kwargs


def _bundle_meta(parser: Any, target: str, kwargs: dict[str, Any]) -> RunMeta:
    """The checkpoint ``meta`` that ``invseg predict`` needs, from the bundle config."""

    def value(key: str, default: Any) -> Any:
        return _raw(parser, key, key) if key in parser else default

    roi = [int(r) for r in value("roi_size", [128, 128, 128])]
    convention = str(value("convention", "brats"))
    return RunMeta(
        target=target,
        kwargs=kwargs,
        convention=convention,
        modalities=_modalities(convention),
        spacing=[float(s) for s in value("spacing", [1.0, 1.0, 1.0])],
        crop=roi,
        roi_size=roi,
        sw_batch_size=int(value("sw_batch_size", 1)),
        overlap=float(value("overlap", 0.5)),
        amp=bool(value("amp", False)),
    )


def load_bundle_weights(network: torch.nn.Module, path: str | Path) -> torch.nn.Module:
    """Load weights into the bundle's network; a bad file prints one line and exits with 2.

    Used by ``configs/bundle_brats/configs/inference.json`` instead of MONAI's
    ``CheckpointLoader``, so ``python -m monai.bundle run`` reports a refused or mismatched file
    as ``invseg: error: ...`` instead of a traceback.
    """
    try:
        _load_into(network, read_weights(path), path)
    except ValueError as err:
        print(f"invseg: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    return network


def case_name_formatter(metadict: Mapping[str, Any] | None, saver: Any) -> dict[str, Any]:
    """Output name ``<case_id>`` for MONAI ``SaveImaged`` (its ``output_name_formatter``).

    The case id is the first input file's name without extension and modality suffix
    (``BraTS20_Training_001_t1.nii.gz`` -> ``BraTS20_Training_001``), matching the
    ``<case_id>.nii.gz`` files written by ``invseg predict``.

    Args:
        metadict: the image meta dictionary (``filename_or_obj`` is read).
        saver: the ``SaveImage`` transform (unused; part of MONAI's signature).

    Returns:
        ``{"subject": case_id, "idx": patch_index}`` for ``FolderLayout.filename``.

    Example:
        >>> case_name_formatter({"filename_or_obj": "/d/BraTS-GLI-00001-000-t1n.nii.gz"}, None)
        {'subject': 'BraTS-GLI-00001-000', 'idx': None}
    """
    meta = dict(metadict or {})
    source = meta.get("filename_or_obj", "case")
    if isinstance(source, list | tuple):
        source = source[0] if source else "case"
    return {"subject": _case_id(source), "idx": meta.get("patch_index")}


def export_to_bundle(checkpoint: str | Path, bundle_dir: str | Path) -> dict[str, Any]:
    """Write the weights of an ``invseg train`` checkpoint as ``<bundle_dir>/models/model.pt``.

    The file is the bare ``state_dict`` (``checkpoint["model"]``), written atomically. The
    returned overrides rebuild the same network in the bundle, e.g. on the command line
    ``--channels "[16,32,64,128]" --blocks 1 --network_def#_target_ invseg.nets.UNet3D``.

    Args:
        checkpoint: ``best.pt`` or ``last.pt`` from ``invseg train``.
        bundle_dir: the bundle folder (holding ``configs/``).

    Returns:
        ``{config id: value}`` overrides for ``python -m monai.bundle run``.

    Raises:
        ValueError: not an invseg checkpoint, or one without a ``meta`` description.

    Example:
        >>> import tempfile, pathlib, torch
        >>> from invseg.nets import PartiallyInvResUNet
        >>> from invseg.runtime.checkpoint import save_checkpoint
        >>> tmp = pathlib.Path(tempfile.mkdtemp())
        >>> net = PartiallyInvResUNet(3, 4, 3, channels=(4, 8))
        >>> meta = {"target": "invseg.nets.PartiallyInvResUNet", "convention": "brats",
        ...         "kwargs": {"in_channels": 4, "out_channels": 3, "channels": [4, 8]}}
        >>> _ = save_checkpoint({"model": net.state_dict(), "meta": meta}, tmp / "best.pt")
        >>> export_to_bundle(tmp / "best.pt", tmp / "bundle")["channels"]
        [4, 8]
        >>> sorted(torch.load(tmp / "bundle/models/model.pt", weights_only=True)) == sorted(
        ...     net.state_dict())
        True
    """
    ckpt = load_checkpoint(checkpoint)
    meta = RunMeta.from_dict(ckpt.get("meta"), source=checkpoint)
    model_for_weights(lambda: meta.build_model(), ckpt["model"], source=checkpoint)
    out = Path(bundle_dir) / "models" / "model.pt"
    save_checkpoint(ckpt["model"], out)
    kwargs = dict(meta.kwargs)
    overrides: dict[str, Any] = {"network_def#_target_": full_name(model_class(meta.target))}
    for key, value in kwargs.items():
        if key in _NET_IDS:
            overrides[key] = value
        elif key != "_target_":
            overrides[f"network_def#{key}"] = value
    for key in ("convention", "spacing", "roi_size", "sw_batch_size", "overlap"):
        overrides[key] = getattr(meta, key)
    return overrides


def import_from_bundle(
    bundle_dir: str | Path,
    output: str | Path,
    *,
    weights: str | Path | None = None,
    config_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Path:
    """Write an invseg checkpoint (``model`` + ``meta``) from a bundle's weights and config.

    The network is described by the bundle's ``network_def`` (after ``overrides``), so
    ``invseg predict -m CHECKPOINT -i INPUTS -o OUT`` rebuilds and runs it.

    Args:
        bundle_dir: the bundle folder.
        output: path of the checkpoint to write (e.g. ``runs/from_bundle/best.pt``).
        weights: weights file (default ``<bundle_dir>/models/model.pt``): a bare ``state_dict``
            or a MONAI ``CheckpointSaver`` file holding ``{"model": state_dict, ...}``.
        config_file: bundle config (default ``<bundle_dir>/configs/inference.json``).
        overrides: ``{config id: value}`` applied to the config first (as on the command line).

    Returns:
        ``output``.

    Raises:
        ValueError: missing files, or weights that do not fit ``network_def``.

    Example:
        >>> import tempfile, pathlib, shutil, torch, invseg
        >>> from invseg.nets import PartiallyInvResUNet
        >>> from invseg.commands.predict import load_model
        >>> repo = pathlib.Path(invseg.__file__).parents[1]   # a source checkout
        >>> tmp = pathlib.Path(tempfile.mkdtemp())
        >>> _ = shutil.copytree(repo / "configs/bundle_brats/configs", tmp / "configs")
        >>> (tmp / "models").mkdir()
        >>> torch.save(PartiallyInvResUNet(3, 4, 3, channels=(4, 8)).state_dict(),
        ...            tmp / "models/model.pt")
        >>> ckpt = import_from_bundle(tmp, tmp / "best.pt", overrides={"channels": [4, 8]})
        >>> model, meta = load_model(ckpt)
        >>> meta.target, meta.convention
        ('invseg.nets.PartiallyInvResUNet', 'brats')
    """
    from monai.bundle import ConfigParser

    bundle_dir = Path(bundle_dir)
    weights = Path(weights) if weights is not None else bundle_dir / "models" / "model.pt"
    config_file = (
        Path(config_file) if config_file is not None else bundle_dir / "configs" / "inference.json"
    )
    if not config_file.is_file():
        raise ValueError(f"bundle config file '{config_file}' does not exist.")
    state = read_weights(weights)
    parser = ConfigParser()
    parser.read_config(str(config_file))
    for key, value in (overrides or {}).items():
        parser[key] = value
    target, kwargs = _network_def(parser)
    model = model_for_weights(
        lambda: build_model(target, kwargs, path="network_def"),
        state,
        source=weights,
        hint="pass the overrides the bundle was run with (channels, blocks, ...).",
    )
    meta = _bundle_meta(parser, target, kwargs)
    return save_checkpoint({"model": model.state_dict(), "meta": meta}, output)
