"""Checkpoints that load with ``torch.load(weights_only=True)`` and the :class:`RunMeta` they hold.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts:

* ``model``, ``optimizer``, ``scheduler``, ``scaler``: ``state_dict()`` of each (``scaler`` and
  ``scheduler`` may be ``None``);
* ``epoch``, ``step`` (optimizer steps done), ``batch_in_epoch`` (micro-batches consumed in the
  current epoch, for an exact resume), ``best_metric``, ``best_step``;
* ``rng``: torch (CPU and CUDA), numpy and python RNG states as tensors;
* ``config``: the resolved run config; ``meta``: a :class:`RunMeta` as a dict (segmentation:
  what prediction needs).

:class:`RunMeta` is written (:meth:`RunMeta.to_dict`) and read (:meth:`RunMeta.from_dict`) only
here; ``train``, ``bundle`` and :func:`load_model` go through it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from invseg.nets.registry import check_plain
from invseg.runtime.config import Section, resolve_target
from invseg.runtime.files import atomic_save_torch

__all__ = [
    "RunMeta",
    "build_model",
    "capture_rng",
    "check_weights",
    "load_checkpoint",
    "load_model",
    "load_weights",
    "load_weights_only",
    "model_for_weights",
    "restore_rng",
    "save_checkpoint",
]


@dataclass
class RunMeta(Section):
    """What a segmentation checkpoint says about its network and its data.

    Attributes:
        target: full dotted class of the network; ``kwargs`` its arguments.
        convention: label convention name (``brats``, ``brats2023``, ``msd``, ``iseg``).
        modalities: input channel names in order; ``layout``: dataset layout trained on.
        spacing, crop, roi_size, sw_batch_size, overlap, tta, amp: preprocessing and inference.
    """

    target: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    convention: str = "brats"
    modalities: list[str] = field(default_factory=list)
    layout: str | None = None
    spacing: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    crop: list[int] = field(default_factory=lambda: [128, 128, 128])
    roi_size: list[int] = field(default_factory=lambda: [128, 128, 128])
    sw_batch_size: int = 1
    overlap: float = 0.5
    tta: bool = False
    amp: bool = False
    invseg_version: str = ""

    def __post_init__(self) -> None:
        if not self.invseg_version:
            import invseg

            self.invseg_version = invseg.__version__

    def check(self, path: str) -> None:
        """Bounds a prediction can rely on (a hostile file must not ask for a 10^9 window)."""
        check_plain(self.kwargs, f"{path}.kwargs")
        for name in ("crop", "roi_size"):
            sizes = getattr(self, name)
            if len(sizes) != 3 or not all(1 <= int(v) <= _MAX_SIDE for v in sizes):
                raise ValueError(f"{path}.{name}: {sizes} must be 3 sizes in 1..{_MAX_SIDE}")
        if len(self.spacing) != 3 or not all(0 < v < 100 for v in self.spacing):
            raise ValueError(f"{path}.spacing: {self.spacing} must be 3 positive sizes in mm")
        if not 1 <= self.sw_batch_size <= 256:
            raise ValueError(f"{path}.sw_batch_size: {self.sw_batch_size} must be in 1..256")
        if not 0 <= self.overlap < 1:
            raise ValueError(f"{path}.overlap: {self.overlap} must be in [0, 1)")

    @classmethod
    def from_dict(cls, meta: Any, *, source: str | Path = "checkpoint") -> RunMeta:
        """Read the ``meta`` entry of a checkpoint as data: typed, bounded, nothing evaluated.

        Raises:
            ValueError: ``"<source>: meta.<field>: ..."``; no network description.
        """
        if not isinstance(meta, Mapping) or "target" not in meta:
            raise ValueError(
                f"{source}: checkpoint has no model description ('meta'); was it written by "
                "`invseg train`?"
            )
        try:
            return cls.build(
                {k: v for k, v in meta.items() if k in cls.__dataclass_fields__}, "meta"
            )
        except ValueError as err:
            raise ValueError(f"{source}: {err}") from None

    def build_model(self, *, model_class: str | None = None) -> nn.Module:
        """The network, freshly initialised, from the registry (:mod:`invseg.nets.registry`).

        Args:
            model_class: a dotted class path the *user* names (``--model-class``) for a
                ``target`` outside the registry; the file itself can never name code to import.

        Raises:
            ValueError: ``"meta.target: ..."`` or ``"meta.kwargs.<key>: ..."``, one line.
        """
        return build_model(self.target, self.kwargs, model_class=model_class)


#: Largest crop / window side a checkpoint may ask for (voxels).
_MAX_SIDE = 4096


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
        cls = resolve_target(model_class)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError, RuntimeError, AssertionError) as err:
        why = " ".join(str(err).split()) or type(err).__name__
        raise ValueError(f"{path}.kwargs: {cls.__name__} refused them ({why})") from None


def capture_rng() -> dict[str, Any]:
    """RNG states of torch (CPU, CUDA), numpy and python as tensors / plain types.

    Example:
        >>> state = capture_rng(); a = torch.rand(1); restore_rng(state); bool(torch.rand(1) == a)
        True
    """
    kind, keys, pos, has_gauss, gauss = np.random.get_state()  # noqa: NPY002 - the global legacy RNG is what we save
    version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": {
            "version": int(version),
            "state": torch.tensor(py_state, dtype=torch.int64),
            "gauss": py_gauss,
        },
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Restore the states returned by :func:`capture_rng`."""
    torch.set_rng_state(state["torch"].cpu().to(torch.uint8))
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu().to(torch.uint8) for s in cuda])
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["gauss"]))  # noqa: NPY002
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` with :func:`torch.save` atomically (a crash leaves the old file).

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "last.pt"
        >>> p = save_checkpoint({"model": {}, "step": 3}, path)
        >>> load_checkpoint(p)["step"]
        3
    """
    state = dict(state)
    if isinstance(state.get("meta"), RunMeta):
        state["meta"] = state["meta"].to_dict()
    return atomic_save_torch(path, state)


def _pickled_globals(path: Path) -> list[str]:
    """Python objects a torch zip file's pickle names, read with :mod:`pickletools` (nothing runs).

    Names under ``torch.`` and the few others a weights-only file needs are left out; an
    unreadable file gives ``[]``.
    """
    import pickletools
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            name = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
            data = archive.read(name) if name is not None else b""
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return []
    found: list[str] = []
    strings: list[str] = []
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name in ("GLOBAL", "INST"):
                found.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
            if isinstance(arg, str):
                strings.append(arg)
    except Exception:  # a truncated pickle: keep what was read
        pass
    return [g for g in found if not g.startswith("torch.") and g not in _WEIGHTS_GLOBALS]


#: Non-torch globals a weights-only file may name (what ``torch.save`` writes for plain data).
_WEIGHTS_GLOBALS = frozenset(
    {"collections.OrderedDict", "_codecs.encode", "builtins.set", "builtins.frozenset"}
)


def _refusal(path: Path, err: Exception) -> str:
    """One line for a failed weights-only load, in invseg's words (not torch's)."""
    objects = _pickled_globals(path)
    if objects:
        return (
            f"{path}: refused: the file pickles Python objects ({objects[0]}), not only "
            "tensors and plain data; an invseg checkpoint holds weights only and nothing in it "
            "was run."
        )
    return (
        f"{path}: not a readable checkpoint: truncated, corrupt or not written by torch.save "
        f"({type(err).__name__})."
    )


def load_weights_only(path: str | Path, *, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``; a refusal is one line in invseg's words.

    Raises:
        ValueError: the file pickles Python objects (named, nothing run), or is truncated,
            corrupt or no torch file.
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise ValueError(_refusal(Path(path), err)) from None


def load_checkpoint(
    path: str | Path, *, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (no pickled code is executed).

    Raises:
        ValueError: the file is missing, pickles objects, or is not an invseg checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(
            f"checkpoint '{path}' does not exist; pass the best.pt or last.pt "
            "written by `invseg train` into the run folder."
        )
    state = load_weights_only(path, map_location=map_location)
    if not isinstance(state, dict) or not isinstance(state.get("model"), Mapping):
        raise ValueError(f"{path}: not an invseg checkpoint (no 'model' entry of weights).")
    for key, value in state["model"].items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise ValueError(f"{path}: model.{key}: {type(value).__name__} is not a tensor.")
    return state


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
        raise ValueError(
            f"{source}: the weights do not fit the model ({'; '.join(parts)}); {hint}"
        )
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
