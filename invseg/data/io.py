"""Atomic image writing (temporary file in the same folder, then ``os.replace``)."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

from invseg.data.naming import split_ext
from invseg.files import atomic_write_text


def save_image(img: Any, path: Path) -> None:
    """Save a nibabel image atomically; Analyze ``.hdr`` also moves its ``.img`` into place.

    Readers never see a half-written file: the image is written under a hidden temporary name
    (which dataset discovery skips) and renamed.
    """
    import nibabel as nib

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stem, ext = split_ext(path)
    tmp = path.parent / f".{stem}.{uuid.uuid4().hex}.tmp{ext}"
    moves = [(tmp, path)]
    if ext.lower() == ".hdr":
        moves.insert(0, (tmp.with_suffix(".img"), path.with_suffix(".img")))
    try:
        nib.save(img, str(tmp))
        for src, dst in moves:
            os.replace(src, dst)
    finally:
        for src, _ in moves:
            src.unlink(missing_ok=True)


def save_json(data: Any, path: Path) -> None:
    """Write JSON atomically."""
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
