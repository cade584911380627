"""What ``invseg evaluate`` settles before scoring: the predictions, their references, the labels.

A reference needs only its label file: a dataset case whose images are missing or incomplete is
still a reference (the layouts' label naming finds it when dataset discovery does not).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["detect_convention", "find_pairs", "label_folder", "references", "scan_labels", "shown"]

_ISEG_CASE = re.compile(r"^subject-\d+$", re.IGNORECASE)


def label_folder(folder: Path) -> dict[str, Path]:
    """``{case_id: file}`` of the label maps directly in ``folder``, named ``<case_id>.nii.gz``."""
    from invseg.data.naming import image_files, split_ext

    return {split_ext(p)[0]: p for p in image_files(folder)}


def references(ref_dir: Path) -> tuple[dict[str, Path], Any]:
    """``({case_id: label file}, convention or None)`` from a dataset or a folder of labels.

    Only label files are needed: dataset discovery (which wants every modality of a case) gives
    the convention and cases with freely named labels, the layouts' label naming the rest.
    """
    from invseg.data import DataError, discover

    if not ref_dir.is_dir():
        raise DataError(f"{ref_dir}: no such folder")
    scanned, scanned_convention = scan_labels(ref_dir)
    try:
        info = discover(ref_dir)
    except DataError:
        files = scanned or label_folder(ref_dir)
        if not files:
            raise
        return files, scanned_convention if scanned else None
    refs = {**scanned, **{c.case_id: c.label for c in info.cases if c.label is not None}}
    if not refs:
        raise DataError(f"{ref_dir}: the {info.layout} dataset has no label files to compare to")
    return refs, info.convention


def scan_labels(root: Path, depth: int = 2) -> tuple[dict[str, Path], Any]:
    """``({case_id: label file}, convention or None)`` by the layouts' label naming.

    Looks for ``labelsTr/`` (MSD, nnU-Net), ``<case>_seg``/``<case>-seg`` (BraTS) and
    ``subject-N-label`` (iSeg) in ``root`` and its sub-folders (or in the one folder an archive
    unpacks to); image files are not needed.
    """
    from invseg.data import DataError, convention_from_dataset_json, get_convention
    from invseg.data.layouts import get_layout, match_file
    from invseg.data.naming import image_files, split_ext

    meta = root / "dataset.json"
    if (root / "labelsTr").is_dir() and meta.is_file():
        try:
            conv = convention_from_dataset_json(json.loads(meta.read_text()), where=meta)
        except (OSError, ValueError) as err:
            raise DataError(f"{meta}: unreadable dataset.json ({err})") from None
        return label_folder(root / "labelsTr"), conv
    found: dict[str, Path] = {}
    conventions: set[str | None] = set()
    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    for folder in (root, *subdirs):
        for f in image_files(folder):
            hit = match_file(split_ext(f)[0])
            if hit is not None and hit.key == get_layout(hit.layout).label_key:
                found.setdefault(hit.case_id, f)
                conventions.add(get_layout(hit.layout).convention)
    if not found and len(subdirs) == 1 and depth > 1:  # an archive's one top folder
        return scan_labels(subdirs[0], depth - 1)
    known = next(iter(conventions)) if len(conventions) == 1 else None
    return found, get_convention(known) if known else None


def detect_convention(refs: dict[str, Path]) -> Any:
    """Convention from the label values: 4 -> BraTS 2020/21, 10/150/250 -> iSeg."""
    from invseg.data import DataError, get_convention, read_image

    seen: set[int] = set()
    for path in refs.values():
        values = {int(v) for v in np.unique(read_image(path)[0])}
        seen |= values
        if values & {10, 150, 250} and values <= {0, 10, 150, 250}:
            return get_convention("iseg")
        if 4 in values:
            return get_convention("brats")
    where = next(iter(refs.values())).parent
    if seen <= {0, 1, 2, 3} and all(_ISEG_CASE.match(i) for i in refs):
        raise DataError(
            f"{where}: iSeg subjects with label values {sorted(seen)}: iSeg stores 10 (CSF), "
            "150 (GM), 250 (WM); map the class indices 1/2/3 back to 10/150/250 and pass "
            "labels='iseg' (values 0-3 of BraTS 2023 or MSD regions: 'brats2023' or 'msd')"
        )
    raise DataError(
        f"{where}: cannot tell the label convention from the values {sorted(seen)} "
        "(0/1/2/3 fits both 'brats2023' and 'msd'); pass labels='brats2023', 'msd', 'brats' "
        "or 'iseg'"
    )


def find_pairs(pred_dir: Path, ref_dir: Path, labels: str | None) -> tuple[dict, dict, Any]:
    """``({case: prediction}, {case: reference}, convention)``; every prediction has a reference."""
    from invseg.data import DataError, get_convention

    if not pred_dir.is_dir():
        raise DataError(f"{pred_dir}: no such folder of predictions")
    preds = label_folder(pred_dir)
    if not preds:
        raise DataError(f"{pred_dir}: holds no prediction files (<case_id>.nii.gz)")
    refs, dataset_convention = references(ref_dir)
    extra = sorted(set(preds) - set(refs))
    if extra:
        raise DataError(
            f"{pred_dir}: {len(extra)} prediction(s) have no reference in {ref_dir}: "
            + shown(extra)
        )
    if labels is not None:
        return preds, refs, get_convention(labels)
    if dataset_convention is not None:
        return preds, refs, dataset_convention
    return preds, refs, detect_convention({i: refs[i] for i in sorted(preds)})


def shown(ids: list[str], n: int = 5) -> str:
    """The first ``n`` ids, then how many more.

    Example:
        >>> shown(["a", "b", "c"], n=2)
        'a, b ... (1 more)'
    """
    return ", ".join(ids[:n]) + (f" ... ({len(ids) - n} more)" if len(ids) > n else "")
