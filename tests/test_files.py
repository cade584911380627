"""The one atomic writer: umask honoured, fsync before the rename, stale temporaries removed."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from invseg.files import (
    atomic_path,
    atomic_save_numpy,
    atomic_save_torch,
    atomic_write,
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
    hexname = "0123456789abcdef" * 2  # uuid4().hex: save_image's temporaries of NIfTI/Analyze
    for name in (
        ".last.pt.ab12cd34.tmp",
        ".config.yaml.x_y1z2w3.tmp",
        ".c.nii.gz.abcdefgh.tmp.nii.gz",
        f".BraTS20_Training_001.{hexname}.tmp.nii.gz",
        f".subject-1.{hexname}.tmp.hdr",
        f".subject-1.{hexname}.tmp.img",
    ):
        (tmp_path / name).write_bytes(b"")
    keep = [
        tmp_path / "last.pt",
        tmp_path / ".hidden",
        tmp_path / "notes.tmp",
        tmp_path / ".c.nii.gz.abc.tmp",  # not 8 random characters
        tmp_path / f".c.{hexname[:-1]}.tmp.nii.gz",  # 31 hex digits
    ]
    for p in keep:
        p.write_bytes(b"1")
    (tmp_path / ".d.abcdefgh.tmp").mkdir()  # a folder is never removed
    keep.append(tmp_path / ".d.abcdefgh.tmp")
    assert remove_stale_temps(tmp_path) == 6
    assert sorted(tmp_path.iterdir()) == sorted(keep)


def test_stale_temporaries_can_be_limited_to_the_files_a_command_writes(tmp_path: Path) -> None:
    hexname = "fedcba9876543210" * 2
    mine = [".metrics.csv.ab12cd34.tmp", f".metrics.{hexname}.tmp.csv"]
    others = [".other.csv.ab12cd34.tmp", f".case.{hexname}.tmp.nii.gz", ".metrics.csv"]
    for name in mine + others:
        (tmp_path / name).write_bytes(b"")
    assert remove_stale_temps(tmp_path, names=["metrics.csv"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(others)
    assert remove_stale_temps(tmp_path / "missing", names=["metrics.csv"]) == 0


def test_fsync_flushes_the_temporary_file_before_the_rename(tmp_path: Path, monkeypatch) -> None:
    events: list[tuple[str, int]] = []

    def recording(name: str, real):
        def call(first, *rest):
            ino = os.fstat(first).st_ino if name == "fsync" else os.stat(first).st_ino
            events.append((name, ino))
            return real(first, *rest)

        return call

    for name in ("fsync", "replace", "rename"):
        monkeypatch.setattr(os, name, recording(name, getattr(os, name)))
    path = atomic_save_torch(tmp_path / "last.pt", {"w": torch.arange(3)})
    assert [e[0] for e in events] in (["fsync", "replace"], ["fsync", "rename"])
    assert events[0][1] == events[1][1] == path.stat().st_ino  # the same file, then renamed
    assert torch.load(path, weights_only=True)["w"].tolist() == [0, 1, 2]
    events.clear()
    atomic_write(tmp_path / "b.bin", lambda f: f.write(b"x"), fsync=True)
    assert len(events) == 2 and events[0][0] == "fsync"
    events.clear()
    atomic_write_text(tmp_path / "c.txt", "x")  # no fsync asked for
    assert "fsync" not in [e[0] for e in events] and len(events) == 1
