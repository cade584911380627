"""The one atomic writer: umask honoured, stale temporary files removed."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from invseg.runtime.files import (
    atomic_path,
    atomic_save_numpy,
    atomic_save_torch,
    atomic_write_text,
    remove_stale_temps,
)


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_written_files_follow_the_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        paths = [
            atomic_write_text(tmp_path / "a.txt", "x"),
            atomic_save_torch(tmp_path / "b.pt", {"w": torch.ones(1)}),
            atomic_save_numpy(tmp_path / "c.npy", np.zeros(2)),
        ]
    finally:
        os.umask(old)
    for p in paths:
        assert p.stat().st_mode & 0o777 == 0o666 & ~umask, p


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = atomic_write_text(tmp_path / "a.txt", "old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert path.read_text() == "old" and list(tmp_path.iterdir()) == [path]


def test_stale_temporaries_of_killed_writes_are_removed(tmp_path: Path) -> None:
    for name in (
        ".last.pt.ab12cd34.tmp",
        ".config.yaml.x_y1z2w3.tmp",
        ".c.nii.gz.abcdefgh.tmp.nii.gz",
    ):
        (tmp_path / name).write_bytes(b"")
    keep = [tmp_path / "last.pt", tmp_path / ".hidden", tmp_path / "notes.tmp"]
    for p in keep:
        p.write_bytes(b"1")
    assert remove_stale_temps(tmp_path) == 3
    assert sorted(tmp_path.iterdir()) == sorted(keep)
