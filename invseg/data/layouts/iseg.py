"""iSeg 2017/2019: Analyze 7.5 pairs ``subject-{N}-{T1,T2,label}.hdr/.img`` in one folder."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from invseg.data.case import DatasetInfo
from invseg.data.layouts.base import FileMatch, Layout
from invseg.data.naming import image_files, natural_key, split_ext

__all__ = ["ISEG", "IsegLayout"]

_RE = re.compile(r"^(?P<case>subject-\d+)-(?P<mod>T1|T2|label)$", re.IGNORECASE)
_KEYS = {"t1": "T1", "t2": "T2", "label": "label"}


@dataclass(frozen=True)
class IsegLayout(Layout):
    """iSeg subjects; labels 0/10/150/250 (background, CSF, GM, WM).

    Example:
        >>> ISEG.match_file("Subject-10-t1")
        FileMatch(case_id='subject-10', key='T1', layout='iseg')
    """

    def match_file(self, stem: str, *, strict: bool = True) -> FileMatch | None:
        m = _RE.match(stem)
        if m is None:
            return None
        return FileMatch(m["case"].lower(), _KEYS[m["mod"].lower()], self.name)

    def discover(self, root: Path) -> DatasetInfo | None:
        groups: dict[str, dict[str, Path]] = {}
        for path in image_files(root):
            hit = self.match_file(split_ext(path)[0])
            if hit:
                groups.setdefault(hit.case_id, {})[hit.key] = path
        if not groups:
            return None
        cases = [self.case_from_files(k, groups[k]) for k in sorted(groups, key=natural_key)]
        return self.info(root, cases)


ISEG = IsegLayout(
    "iseg",
    "subject-N-{T1,T2,label}.hdr/.img (Analyze 7.5)",
    ("T1", "T2"),
    "iseg",
    label_key="label",
    sep="-",
)
