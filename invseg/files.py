"""The one atomic writer: every file invseg writes goes through a temporary file and a rename.

A temporary file is named ``.NAME.XXXXXXXX.tmp`` (plus ``NAME``'s own suffixes when a library
needs them to choose a format, e.g. ``.tmp.nii.gz``) in the target's folder, so a reader never
sees a half-written file and a killed write leaves only such a hidden file, which
:func:`remove_stale_temps` deletes at the start of the next run (it also knows the
``.STEM.<32 hex digits>.tmp.EXT`` names of :func:`invseg.data.io.save_image`, which writes the
NIfTI/Analyze predictions). Commands that write into an output folder say what they found
there with :func:`output_notes` ("replaced 4 earlier results"). The final file gets the
permissions of a file created with ``open()`` (``0666`` minus the umask), not ``mkstemp``'s
``0600``, so a lab group can read results.

Example:
    >>> import pathlib, tempfile
    >>> p = atomic_write_text(pathlib.Path(tempfile.mkdtemp()) / "a.txt", "hi")
    >>> p.read_text()
    'hi'
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "atomic_path",
    "atomic_save_numpy",
    "atomic_save_torch",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "output_notes",
    "read_rows",
    "remove_stale_temps",
    "write_rows",
]

#: ``.NAME.XXXXXXXX.tmp[.EXT]`` (mkstemp, :func:`atomic_path`) or ``.STEM.<32 hex>.tmp.EXT``
#: (:func:`invseg.data.io.save_image`): the temporary names of invseg's own atomic writers.
_STALE = re.compile(
    r"^\.(?P<name>.+)\.(?:[A-Za-z0-9_]{8}|[0-9a-f]{32})\.tmp(?P<ext>\.[A-Za-z0-9.]+)?$"
)


def _umask() -> int:
    """The process umask (read without changing it where /proc allows)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path, *, keep_suffix: bool = False) -> Iterator[Path]:
    """A temporary path next to ``path``; renamed onto ``path`` when the block ends cleanly.

    Args:
        path: the final file (its folder is created).
        keep_suffix: end the temporary name with ``path``'s suffixes (``.nii.gz``) for writers
            that pick the format from the name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".tmp" + ("".join(path.suffixes) if keep_suffix else "")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(
    path: str | Path, write: Callable[[IO[bytes]], Any], *, fsync: bool = False
) -> Path:
    """Call ``write(f)`` on a binary file object and move the result onto ``path``."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_save_torch(path: str | Path, obj: Any) -> Path:
    """:func:`torch.save` ``obj`` to ``path`` atomically (flushed to disk before the rename)."""
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f), fsync=True)


def atomic_save_numpy(path: str | Path, array: Any) -> Path:
    """:func:`numpy.save` ``array`` to ``path`` atomically."""
    import numpy as np

    return atomic_write(path, lambda f: np.save(f, array))


def remove_stale_temps(folder: str | Path, *, names: Iterable[str] | None = None) -> int:
    """Delete ``.NAME.XXXXXXXX.tmp*`` files that killed writes left in ``folder``; their count.

    Only names of invseg's own temporary files are touched (see the module docstring); other
    hidden files, sub-folders and a missing ``folder`` are left alone.

    Args:
        folder: the folder to clean (not recursive).
        names: only the temporaries of these final file names (``["metrics.csv"]``); ``None``:
            every temporary in ``folder`` (a folder invseg owns: a run or output folder).

    Example:
        >>> import pathlib, tempfile
        >>> d = pathlib.Path(tempfile.mkdtemp()); _ = (d / ".last.pt.abcd1234.tmp").write_bytes(b"")
        >>> remove_stale_temps(d, names=["best.pt"]), remove_stale_temps(d), list(d.iterdir())
        (0, 1, [])
    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    wanted = None if names is None else set(names)
    n = 0
    for p in folder.iterdir():
        m = _STALE.match(p.name)
        if m is None or not p.is_file():
            continue
        if wanted is not None and not {m["name"], m["name"] + (m["ext"] or "")} & wanted:
            continue
        p.unlink(missing_ok=True)
        n += 1
    return n


def output_notes(*, replaced: int = 0, removed: int = 0) -> list[str]:
    """What a command says about the output files it found: replaced results, stale temporaries.

    Args:
        replaced: earlier results (files, or cases/inputs) this run wrote over.
        removed: temporary files of a killed earlier run that :func:`remove_stale_temps` deleted.

    Example:
        >>> output_notes(replaced=4, removed=1)
        ['replaced 4 earlier results', 'removed 1 temporary file left by a killed run']
        >>> output_notes()
        []
    """
    notes = []
    if replaced:
        notes.append(f"replaced {replaced} earlier result{'s' * (replaced != 1)}")
    if removed:
        notes.append(f"removed {removed} temporary file{'s' * (removed != 1)} left by a killed run")
    return notes


def write_rows(path: str | Path, rows: list[dict[str, Any]]) -> Path:
    """Write a table of rows (dicts; missing keys stay empty) as CSV, atomically."""
    import pandas as pd

    return atomic_write_text(path, pd.DataFrame(rows).to_csv(index=False))


def read_rows(path: str | Path, up_to_step: int) -> list[dict[str, Any]]:
    """The rows of a CSV written by :func:`write_rows` whose ``step`` is ``<= up_to_step``.

    Example:
        >>> import pathlib, tempfile
        >>> p = write_rows(pathlib.Path(tempfile.mkdtemp()) / "m.csv",
        ...                [{"step": 1, "loss": 0.5}, {"step": 2, "dice": 0.1}])
        >>> read_rows(p, 1)
        [{'step': 1, 'loss': 0.5}]
    """
    import math

    import pandas as pd

    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return []
    df = pd.read_csv(path)
    df = df[df["step"] <= up_to_step]
    return [
        {k: v for k, v in r.items() if not (isinstance(v, float) and math.isnan(v))}
        for r in df.to_dict("records")
    ]
