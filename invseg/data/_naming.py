"""File-name rules shared by discovery, synthesis and evaluation."""

from __future__ import annotations

import re
from pathlib import Path

IMAGE_EXTS = (".nii.gz", ".nii", ".hdr", ".img")

#: Modality order per layout (the order of the network input channels).
MODALITIES: dict[str, tuple[str, ...]] = {
    "brats2020": ("t1", "t1ce", "t2", "flair"),
    "brats2021": ("t1", "t1ce", "t2", "flair"),
    "brats2023": ("t1n", "t1c", "t2w", "t2f"),
    "iseg": ("T1", "T2"),
}
LAYOUTS = ("brats2020", "brats2021", "brats2023", "msd", "nnunet", "iseg")
LAYOUT_CONVENTION = {
    "brats2020": "brats",
    "brats2021": "brats",
    "brats2023": "brats2023",
    "msd": "msd",
    "iseg": "iseg",
}

BRATS_SEP = {"brats2020": "_", "brats2021": "_", "brats2023": "-"}
ISEG_RE = re.compile(r"^(?P<case>subject-\d+)-(?P<mod>T1|T2|label)$", re.IGNORECASE)
NNUNET_RE = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})$")
BRATS_RE = re.compile(r"^(?P<case>.+)_(?P<mod>t1|t1ce|t2|flair|seg)$")
BRATS23_RE = re.compile(r"^(?P<case>.+)-(?P<mod>t1n|t1c|t2w|t2f|seg)$")


def split_ext(path: Path | str) -> tuple[str, str]:
    """``"a/b_t1.nii.gz" -> ("b_t1", ".nii.gz")``; ``("name", "")`` for other files."""
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
    """Sort key that orders ``subject-2`` before ``subject-10``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


def brats_layout_for(case_id: str, sep: str) -> str:
    """BraTS edition from the naming: ``-`` separated -> 2023+, ``BraTS20_`` -> 2020, else 2021."""
    if sep == "-":
        return "brats2023"
    return "brats2020" if case_id.startswith("BraTS20_") else "brats2021"
