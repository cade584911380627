"""Checkpoints that load with ``torch.load(weights_only=True)`` and are written atomically.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts:

* ``model``, ``optimizer``, ``scheduler``, ``scaler``: ``state_dict()`` of each (``scaler`` may be
  ``None``);
* ``epoch``, ``step`` (optimizer steps done), ``batch_in_epoch`` (micro-batches consumed in the
  current epoch, for an exact resume), ``best_metric``, ``best_step``;
* ``rng``: torch (CPU and CUDA), numpy and python RNG states as tensors;
* ``config``: the resolved run config; ``meta``: what prediction needs (model target and kwargs,
  label convention, modalities, spacing, roi size).
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["capture_rng", "load_checkpoint", "restore_rng", "save_checkpoint"]


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
    """Write ``state`` with :func:`torch.save` through a temporary file and :func:`os.replace`.

    A crash while writing leaves the previous file untouched.

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "last.pt"
        >>> p = save_checkpoint({"model": {}, "step": 3}, path)
        >>> load_checkpoint(p)["step"]
        3
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(
    path: str | Path, *, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (no pickled code is executed).

    Raises:
        ValueError: the file is missing or is not an invseg checkpoint.
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
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(f"{path}: not a readable invseg checkpoint ({msg}).") from err
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(f"{path}: not an invseg checkpoint (no 'model' entry).")
    return state
