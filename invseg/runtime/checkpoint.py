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
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from invseg.files import atomic_save_torch
from invseg.nets.registry import check_plain
from invseg.runtime.config import Section

__all__ = [
    "RunMeta",
    "capture_rng",
    "load_checkpoint",
    "load_weights_only",
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
        from invseg.runtime.restore import build_model

        return build_model(self.target, self.kwargs, model_class=model_class)


#: Largest crop / window side a checkpoint may ask for (voxels).
_MAX_SIDE = 4096


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
