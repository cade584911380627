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
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from invseg.runtime.config import Section, instantiate_model
from invseg.runtime.files import atomic_save_torch

__all__ = [
    "RunMeta",
    "capture_rng",
    "load_checkpoint",
    "load_model",
    "load_weights",
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

    @classmethod
    def from_dict(cls, meta: Any, *, source: str | Path = "checkpoint") -> RunMeta:
        """Read the ``meta`` entry of a checkpoint.

        Raises:
            ValueError: no network description (not written by ``invseg train``).
        """
        if not isinstance(meta, Mapping) or "target" not in meta:
            raise ValueError(
                f"{source}: checkpoint has no model description ('meta'); was it written by "
                "`invseg train`?"
            )
        return cls.build({k: v for k, v in meta.items() if k in cls.__dataclass_fields__}, "meta")

    def build_model(self) -> nn.Module:
        """The network, freshly initialised."""
        return instantiate_model({"_target_": self.target, **self.kwargs})


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


def _refusal(path: Path, err: Exception) -> str:
    """One line for a failed weights-only load (never torch's advice to drop weights_only)."""
    text = str(err)
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        return (
            f"{path}: refused: the file pickles Python objects ({found.group(1)}), not only "
            "tensors and plain data; an invseg checkpoint holds weights only."
        )
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if "Weights only load failed" in text:
        detail = [ln for ln in lines if "weights_only" not in ln and "torch.load" not in ln]
        lines = detail or ["unsupported content"]
    first = lines[0] if lines else type(err).__name__
    return f"{path}: not a readable invseg checkpoint ({first})."


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
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise ValueError(_refusal(path, err)) from err
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(f"{path}: not an invseg checkpoint (no 'model' entry).")
    return state


def load_weights(model: nn.Module, state: Mapping[str, Any], *, source: str | Path) -> None:
    """``model.load_state_dict(state)``, with one line naming the keys that do not fit.

    Raises:
        ValueError: missing, unexpected or differently shaped keys.

    Example:
        >>> load_weights(  # doctest: +ELLIPSIS
        ...     nn.Linear(2, 3), nn.Linear(2, 4).state_dict(), source="x.pt")
        Traceback (most recent call last):
        ...
        ValueError: x.pt: the weights do not fit the model (shape differs: weight [4, 2] vs...
    """
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
            f"{source}: the weights do not fit the model ({'; '.join(parts)}); "
            "was the model config changed?"
        )
    model.load_state_dict(state)


def load_model(
    checkpoint: str | Path, *, device: str | torch.device = "cpu"
) -> tuple[nn.Module, RunMeta]:
    """Rebuild the network stored in a segmentation checkpoint (``weights_only=True`` load).

    Returns:
        ``(model in eval mode on device, meta)``; ``meta`` reads like a dict too.

    Raises:
        ValueError: not an invseg checkpoint, or weights that do not fit the description.
    """
    ckpt = load_checkpoint(checkpoint, map_location="cpu")
    meta = RunMeta.from_dict(ckpt.get("meta"), source=checkpoint)
    model = meta.build_model()
    load_weights(model, ckpt["model"], source=checkpoint)
    dev = torch.device(device) if isinstance(device, str) else device
    return model.to(dev).eval(), meta
