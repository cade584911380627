"""BraTS 2020, 2021 and 2023+ case folders (one folder per case, one file per modality).

========== ==================================================================== =======
layout     files                                                                labels
========== ==================================================================== =======
brats2020  ``BraTS20_Training_001/BraTS20_Training_001_{t1,t1ce,t2,flair,seg}``  0/1/2/4
brats2021  ``BraTS2021_00000/BraTS2021_00000_{t1,t1ce,t2,flair,seg}``            0/1/2/4
brats2023  ``BraTS-GLI-00000-000/BraTS-GLI-00000-000-{t1n,t1c,t2w,t2f,seg}``     0/1/2/3
========== ==================================================================== =======
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from invseg.data.case import Case, DatasetInfo
from invseg.data.errors import DataError
from invseg.data.layouts.base import FileMatch, Layout
from invseg.data.naming import image_files, natural_key, split_ext

__all__ = ["BRATS2020", "BRATS2021", "BRATS2023", "BratsLayout", "scan_brats"]

_RE = {
    "_": re.compile(r"^(?P<case>.+)_(?P<mod>t1|t1ce|t2|flair|seg)$"),
    "-": re.compile(r"^(?P<case>.+)-(?P<mod>t1n|t1c|t2w|t2f|seg)$"),
}


def edition(case_id: str, sep: str) -> str:
    """BraTS edition from the naming: ``-`` separated -> 2023+, ``BraTS20_`` -> 2020, else 2021.

    Example:
        >>> edition("BraTS20_Training_001", "_"), edition("BraTS-GLI-00000-000", "-")
        ('brats2020', 'brats2023')
    """
    if sep == "-":
        return "brats2023"
    return "brats2020" if case_id.startswith("BraTS20_") else "brats2021"


@dataclass(frozen=True)
class BratsLayout(Layout):
    """One BraTS edition: ``<case>/<case><sep><modality>.nii.gz`` with a ``seg`` label file.

    Example:
        >>> BRATS2023.match_file("BraTS-GLI-00000-000-t2f")
        FileMatch(case_id='BraTS-GLI-00000-000', key='t2f', layout='brats2023')
        >>> BRATS2020.label_convention().et_label, BRATS2023.label_convention().et_label
        (4, 3)
    """

    def match_file(self, stem: str, *, strict: bool = True) -> FileMatch | None:
        m = _RE[self.sep].match(stem)
        if m is None or (strict and edition(m["case"], self.sep) != self.name):
            return None
        return FileMatch(m["case"], m["mod"], self.name)

    def discover(self, root: Path) -> DatasetInfo | None:
        found = scan_brats(root)
        if found is None or found[0] != self.name:
            return None
        return self.info(root, found[1])


BRATS2020 = BratsLayout(
    "brats2020",
    "case folders with <case>_{t1,t1ce,t2,flair}.nii.gz (BraTS20_...)",
    ("t1", "t1ce", "t2", "flair"),
    "brats",
)
BRATS2021 = BratsLayout(
    "brats2021",
    "case folders with <case>_{t1,t1ce,t2,flair}.nii.gz",
    ("t1", "t1ce", "t2", "flair"),
    "brats",
)
BRATS2023 = BratsLayout(
    "brats2023",
    "case folders with <case>-{t1n,t1c,t2w,t2f}.nii.gz",
    ("t1n", "t1c", "t2w", "t2f"),
    "brats2023",
    sep="-",
)
_EDITIONS = {x.name: x for x in (BRATS2020, BRATS2021, BRATS2023)}


def _case(folder: Path) -> tuple[str, Case] | None:
    """A BraTS case folder -> ``(edition, case)``; ``None`` when the folder is not one."""
    stems = {split_ext(p)[0]: p for p in image_files(folder)}
    for sep in ("-", "_"):
        found: dict[str, dict[str, Path]] = {}
        for stem, path in stems.items():
            m = _RE[sep].match(stem)
            if m:
                found.setdefault(m["case"], {})[m["mod"]] = path
        if not found:
            continue
        # The case prefix with the most modality files (normally the only one).
        case_id = max(found, key=lambda k: (len(found[k]), k == folder.name))
        mods = found[case_id]
        layout = _EDITIONS[edition(case_id, sep)]
        if not any(m in mods for m in layout.modalities):
            continue
        missing = [m for m in layout.modalities if m not in mods]
        if missing:
            ext = split_ext(next(iter(mods.values())))[1]
            raise DataError(
                f"{folder}: missing modality {missing[0]!r} "
                f"(expected {case_id}{sep}{missing[0]}{ext})"
            )
        label = mods.get("seg")
        if label is None:  # one Kaggle copy names a seg file freely, e.g. W39_..._Segm.nii
            others = [p for s, p in stems.items() if "seg" in s.lower() and p not in mods.values()]
            label = others[0] if len(others) == 1 else None
        return layout.name, Case(case_id, tuple(mods[m] for m in layout.modalities), label)
    return None


def scan_brats(root: Path) -> tuple[str, list[Case]] | None:
    """``(edition, cases)`` of a BraTS folder (or single case folder); ``None``: not BraTS.

    Raises:
        DataError: a case misses a modality, or the folder mixes editions.
    """
    found = [_case(root)] if image_files(root) else []
    if not any(found):
        found = [_case(d) for d in sorted(root.iterdir()) if d.is_dir()]
    hits = [f for f in found if f is not None]
    if not hits:
        return None
    editions = sorted({name for name, _ in hits})
    if len(editions) > 1:
        raise DataError(f"{root}: mixes BraTS layouts {editions}; keep one edition per folder")
    return editions[0], sorted((c for _, c in hits), key=lambda c: natural_key(c.case_id))
