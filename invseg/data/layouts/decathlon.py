"""Medical Segmentation Decathlon (MSD) and nnU-Net: ``dataset.json`` + ``imagesTr/``.

========  ======================================================================  =========
layout    files                                                                   labels
========  ======================================================================  =========
msd       ``dataset.json``, ``imagesTr/BRATS_001`` (4-D), ``labelsTr/BRATS_001``  0/1/2/3
nnunet    ``dataset.json``, ``imagesTr/CASE_0000``..., ``labelsTr/CASE``          from json
========  ======================================================================  =========

MSD keeps the channel order of its 4-D files (Task01: FLAIR, T1w, t1gd, T2w, as listed in
``dataset.json``); nnU-Net lists its channels in ``channel_names``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from invseg.data.case import Case, DatasetInfo
from invseg.data.conventions import CONVENTIONS, LabelConvention
from invseg.data.errors import DataError
from invseg.data.layouts.base import FileMatch, Layout
from invseg.data.naming import image_files, natural_key, split_ext

__all__ = ["MSD", "NNUNET", "DecathlonLayout", "convention_from_dataset_json"]

_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})$")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable dataset.json ({exc})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: dataset.json must hold a JSON object")
    return data


def _norm(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def _label_pairs(labels: dict[str, Any]) -> tuple[dict[int, str], dict[str, tuple[int, ...]]]:
    """``({value: name}, {normalised region name: values})`` (regions empty for MSD style)."""
    if all(isinstance(k, str) and k.strip().isdigit() for k in labels):  # MSD: value -> name
        return {int(k): str(v) for k, v in labels.items()}, {}
    pairs: dict[int, str] = {}
    regions: dict[str, tuple[int, ...]] = {}
    for name, value in labels.items():  # nnU-Net v2: name -> value or list of values (regions)
        if isinstance(value, list):
            regions[_norm(name)] = tuple(sorted(int(v) for v in value))
        else:
            pairs[int(value)] = str(name)
            regions[_norm(name)] = (int(value),)
    if not any(isinstance(v, list) for v in labels.values()):
        regions = {}
    return pairs, regions


def convention_from_dataset_json(meta: dict[str, Any], *, where: Path) -> LabelConvention:
    """The label convention described by an MSD or nnU-Net ``dataset.json``.

    MSD Task01 (``1 edema, 2 non-enhancing tumour, 3 enhancing tumour``) and nnU-Net's BraTS
    region definitions map onto the built-in conventions (``"msd"``, ``"brats"``); anything
    else becomes a ``"classes"`` convention with the json's values and names.

    Example:
        >>> meta = {"labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor",
        ...                    "3": "enhancing tumour"}}
        >>> convention_from_dataset_json(meta, where=Path("dataset.json")).name
        'msd'
    """
    labels = meta.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise DataError(f"{where}: dataset.json has no 'labels' mapping")
    try:
        pairs, regions = _label_pairs(labels)
    except (TypeError, ValueError):
        raise DataError(f"{where}: cannot read the 'labels' of dataset.json: {labels}") from None
    if regions:
        wt = regions.get("wholetumor") or regions.get("wholetumour")
        tc = regions.get("tumorcore") or regions.get("tumourcore")
        et = regions.get("enhancingtumor") or regions.get("enhancingtumour")
        for conv in CONVENTIONS.values():
            ours = tuple(tuple(sorted(r)) for r in conv.regions)
            if conv.kind == "regions" and (tc, wt, et) == ours:
                return conv
        raise DataError(
            f"{where}: region labels {labels} are not a BraTS region set (whole tumor, tumor core, "
            "enhancing tumor); pass labels= explicitly"
        )
    names = {v: _norm(n) for v, n in pairs.items()}
    if names.get(1, "").startswith("edema") and "enhanc" in names.get(3, "") and 4 not in names:
        return CONVENTIONS["msd"]
    if sorted(pairs) in ([0, 10, 150, 250], [10, 150, 250]):
        return CONVENTIONS["iseg"]
    values = tuple(sorted(set(pairs) | {0}))
    return LabelConvention(
        name=str(meta.get("name", "custom")),
        kind="classes",
        names=tuple(pairs.get(v, "background") for v in values),
        class_values=values,
    )


def _nnunet_cases(folder: Path, paths: list[Path], n: int, labels: dict[str, Path]) -> list[Case]:
    groups: dict[str, dict[int, Path]] = {}
    for p in paths:
        m = _CHANNEL_RE.match(split_ext(p)[0])
        if not m:
            raise DataError(f"{p}: nnU-Net images must be named CASE_XXXX (e.g. CASE_0000)")
        groups.setdefault(m["case"], {})[int(m["ch"])] = p
    n = n or max(len(g) for g in groups.values())
    cases = []
    for case_id, chans in groups.items():
        missing = [c for c in range(n) if c not in chans]
        if missing or len(chans) != n:
            ext = split_ext(next(iter(chans.values())))[1]
            name = f"{case_id}_{missing[0]:04d}{ext}" if missing else "extra channels"
            raise DataError(f"{folder}: case {case_id} is missing {name}")
        label = labels.get(case_id) if folder.name == "imagesTr" else None
        cases.append(Case(case_id, tuple(chans[c] for c in range(n)), label))
    return cases


def _scan(root: Path) -> tuple[str, DatasetInfo] | None:
    """``(layout name, info)`` of an MSD/nnU-Net folder; ``None`` when it is neither."""
    folders = [f for f in (root / "imagesTr", root / "imagesTs") if f.is_dir()]
    if not folders:
        return None
    meta_path = root / "dataset.json"
    if not meta_path.is_file():
        raise DataError(f"{meta_path}: missing; MSD and nnU-Net datasets need their dataset.json")
    meta = _read_json(meta_path)
    files = {f: image_files(f) for f in folders}
    all_files = [p for v in files.values() for p in v]
    nnunet = "channel_names" in meta or "file_ending" in meta
    if not nnunet and all_files and all(_CHANNEL_RE.match(split_ext(p)[0]) for p in all_files):
        nnunet = True  # nnU-Net v1 dataset.json ("modality") with _0000 files
    convention = convention_from_dataset_json(meta, where=meta_path)
    channels = meta.get("channel_names", meta.get("modality", {}))
    try:
        modalities = (
            tuple(str(channels[k]) for k in sorted(channels, key=int))
            if isinstance(channels, dict)
            else ()
        )
    except ValueError:
        raise DataError(f"{meta_path}: channel keys must be 0, 1, ...; got {channels}") from None
    labels = {split_ext(p)[0]: p for p in image_files(root / "labelsTr")}
    cases: list[Case] = []
    for folder, paths in files.items():
        if nnunet:
            cases += _nnunet_cases(folder, paths, len(modalities), labels)
        else:
            for p in paths:
                case_id = split_ext(p)[0]
                label = labels.get(case_id) if folder.name == "imagesTr" else None
                cases.append(Case(case_id, (p,), label))
    if not cases:
        raise DataError(f"{root}: imagesTr/ and imagesTs/ hold no .nii.gz images")
    cases.sort(key=lambda c: natural_key(c.case_id))
    name = "nnunet" if nnunet else "msd"
    info = DatasetInfo(root, name, modalities, convention, tuple(cases))
    return name, info


@dataclass(frozen=True)
class DecathlonLayout(Layout):
    """MSD (one 4-D file per case) or nnU-Net (``CASE_XXXX`` per channel), with dataset.json.

    Example:
        >>> NNUNET.match_file("BRATS_001_0003"), MSD.match_file("BRATS_001_0003")
        (FileMatch(case_id='BRATS_001', key='0003', layout='nnunet'), None)
    """

    def match_file(self, stem: str, *, strict: bool = True) -> FileMatch | None:
        if self.name != "nnunet":
            return None
        m = _CHANNEL_RE.match(stem)
        return FileMatch(m["case"], m["ch"], self.name) if m else None

    def case_from_files(self, case_id: str, files: Mapping[str, Path]) -> Case:
        chans = sorted(files)
        if chans != [f"{i:04d}" for i in range(len(chans))]:
            missing = next(f"{i:04d}" for i in range(len(chans) + 1) if f"{i:04d}" not in files)
            raise DataError(f"{case_id}_{missing}: missing channel file for case {case_id!r}")
        return Case(case_id, tuple(files[c] for c in chans), None)

    def discover(self, root: Path) -> DatasetInfo | None:
        found = _scan(root)
        return found[1] if found is not None and found[0] == self.name else None


MSD = DecathlonLayout("msd", "dataset.json + imagesTr/ with 4-D images", (), "msd")
NNUNET = DecathlonLayout("nnunet", "dataset.json + imagesTr/CASE_0000.nii.gz ...", (), None)
