"""File-name helpers shared by every layout, synthesis and evaluation (layout rules: layouts/)."""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["IMAGE_EXTS", "image_files", "is_image", "natural_key", "split_ext"]

IMAGE_EXTS = (".nii.gz", ".nii", ".hdr", ".img")


def split_ext(path: Path | str) -> tuple[str, str]:
    """``"a/b_t1.nii.gz" -> ("b_t1", ".nii.gz")``; ``("name", "")`` for other files.

    Example:
        >>> split_ext("a/b_t1.nii.gz"), split_ext("notes.txt")
        (('b_t1', '.nii.gz'), ('notes.txt', ''))
    """
    name = Path(path).name
    for ext in IMAGE_EXTS:
        if name.lower().endswith(ext):
            return name[: -len(ext)], name[-len(ext) :]
    return name, ""


def is_image(path: Path) -> bool:
    """Image file we can read (NIfTI or the header of an Analyze pair); hidden files skipped."""
    ext = split_ext(path)[1]
    return bool(ext) and ext.lower() != ".img" and not path.name.startswith(".") and path.is_file()


def image_files(folder: Path) -> list[Path]:
    """The image files directly inside ``folder`` (``.img`` halves of Analyze pairs dropped)."""
    try:
        return sorted(p for p in folder.iterdir() if is_image(p))
    except OSError:
        return []


def natural_key(text: str) -> list[object]:
    """Sort key that orders ``subject-2`` before ``subject-10``.

    Example:
        >>> sorted(["subject-10", "subject-2"], key=natural_key)
        ['subject-2', 'subject-10']
    """
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]
