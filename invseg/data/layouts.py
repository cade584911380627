"""Find the cases of a dataset folder in any of the supported on-disk layouts.

Supported layouts (auto-detected):

============  =====================================================================  ===========
layout        files                                                                  labels
============  =====================================================================  ===========
brats2020     ``BraTS20_Training_001/BraTS20_Training_001_{t1,t1ce,t2,flair,seg}``     0/1/2/4
brats2021     ``BraTS2021_00000/BraTS2021_00000_{t1,t1ce,t2,flair,seg}``               0/1/2/4
brats2023     ``BraTS-GLI-00000-000/BraTS-GLI-00000-000-{t1n,t1c,t2w,t2f,seg}``        0/1/2/3
msd           ``dataset.json``, ``imagesTr/BRATS_001`` (4-D), ``labelsTr/BRATS_001``   0/1/2/3
nnunet        ``dataset.json``, ``imagesTr/CASE_0000``..., ``labelsTr/CASE``           from json
iseg          ``subject-1-{T1,T2,label}.hdr/.img`` (Analyze 7.5)                       0/10/150/250
============  =====================================================================  ===========

Images may be ``.nii.gz`` or ``.nii`` (iSeg also ``.hdr/.img``). Cases without a label file
(BraTS validation folders, ``imagesTs``, iSeg test subjects) are prediction-only
(``label=None``). The BraTS modality order is fixed to ``t1, t1ce, t2, flair`` (2023+:
``t1n, t1c, t2w, t2f``) whatever order the files are listed in; MSD keeps the channel order of
its 4-D files (Task01: FLAIR, T1w, t1gd, T2w, as listed in ``dataset.json``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from invseg._choices import check_option
from invseg.data._errors import DataError
from invseg.data._naming import (
    BRATS23_RE,
    BRATS_RE,
    BRATS_SEP,
    ISEG_RE,
    LAYOUT_CONVENTION,
    LAYOUTS,
    MODALITIES,
    NNUNET_RE,
    brats_layout_for,
    image_files,
    natural_key,
    split_ext,
)
from invseg.data.case import Case, DatasetInfo
from invseg.data.conventions import CONVENTIONS, LabelConvention, get_convention

__all__ = ["LAYOUTS", "cases_from_paths", "discover"]

_TRIED = (
    "brats2020/brats2021 (case folders with <case>_{t1,t1ce,t2,flair}.nii.gz), "
    "brats2023 (case folders with <case>-{t1n,t1c,t2w,t2f}.nii.gz), "
    "msd/nnunet (dataset.json + imagesTr/), iseg (subject-N-T1.hdr)"
)


# --------------------------------------------------------------------------- BraTS
def _brats_case(folder: Path) -> tuple[str, Case] | None:
    """A BraTS case folder -> ``(layout, case)``; ``None`` when the folder is not one."""
    files = image_files(folder)
    stems = {split_ext(p)[0]: p for p in files}
    for regex, sep in ((BRATS23_RE, "-"), (BRATS_RE, "_")):
        found: dict[str, dict[str, Path]] = {}
        for stem, path in stems.items():
            m = regex.match(stem)
            if m:
                found.setdefault(m["case"], {})[m["mod"]] = path
        if not found:
            continue
        # The case prefix with the most modality files (normally the only one).
        case_id = max(found, key=lambda k: (len(found[k]), k == folder.name))
        mods = found[case_id]
        layout = brats_layout_for(case_id, sep)
        wanted = MODALITIES[layout]
        if not any(m in mods for m in wanted):
            continue
        missing = [m for m in wanted if m not in mods]
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
        return layout, Case(case_id, tuple(mods[m] for m in wanted), label)
    return None


def _discover_brats(root: Path) -> DatasetInfo | None:
    found = [_brats_case(root)] if image_files(root) else []
    if not any(found):
        found = [_brats_case(d) for d in sorted(root.iterdir()) if d.is_dir()]
    found = [f for f in found if f is not None]
    if not found:
        return None
    layouts = sorted({layout for layout, _ in found})
    if len(layouts) > 1:
        raise DataError(f"{root}: mixes BraTS layouts {layouts}; keep one edition per folder")
    layout = layouts[0]
    cases = sorted((c for _, c in found), key=lambda c: natural_key(c.case_id))
    return DatasetInfo(
        root, layout, MODALITIES[layout], get_convention(LAYOUT_CONVENTION[layout]), tuple(cases)
    )


# --------------------------------------------------------------------------- iSeg
def _iseg_groups(files: Sequence[Path]) -> dict[str, dict[str, Path]]:
    groups: dict[str, dict[str, Path]] = {}
    for path in files:
        m = ISEG_RE.match(split_ext(path)[0])
        if m:
            mod = {"t1": "T1", "t2": "T2", "label": "label"}[m["mod"].lower()]
            groups.setdefault(m["case"].lower(), {})[mod] = path
    return groups


def _iseg_cases(groups: dict[str, dict[str, Path]], where: Path) -> list[Case]:
    cases = []
    for case_id in sorted(groups, key=natural_key):
        mods = groups[case_id]
        for m in MODALITIES["iseg"]:
            if m not in mods:
                raise DataError(f"{where}: {case_id} is missing modality {m!r} ({case_id}-{m}.hdr)")
        cases.append(Case(case_id, (mods["T1"], mods["T2"]), mods.get("label")))
    return cases


def _discover_iseg(root: Path) -> DatasetInfo | None:
    groups = _iseg_groups(image_files(root))
    if not groups:
        return None
    cases = _iseg_cases(groups, root)
    return DatasetInfo(root, "iseg", MODALITIES["iseg"], get_convention("iseg"), tuple(cases))


# --------------------------------------------------------------------------- MSD / nnU-Net
def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable dataset.json ({exc})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: dataset.json must hold a JSON object")
    return data


def _ordered(mapping: dict[str, Any]) -> tuple[str, ...]:
    return tuple(str(mapping[k]) for k in sorted(mapping, key=lambda k: int(k)))


def _norm(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


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
        if all(isinstance(k, str) and k.strip().isdigit() for k in labels):  # MSD: value -> name
            pairs = {int(k): str(v) for k, v in labels.items()}
            regions = None
        else:  # nnU-Net v2: name -> value or list of values (regions)
            pairs, regions = {}, {}
            for name, value in labels.items():
                if isinstance(value, list):
                    regions[_norm(name)] = tuple(sorted(int(v) for v in value))
                else:
                    pairs[int(value)] = str(name)
                    regions[_norm(name)] = (int(value),)
            if not any(isinstance(v, list) for v in labels.values()):
                regions = None
    except (TypeError, ValueError):
        raise DataError(f"{where}: cannot read the 'labels' of dataset.json: {labels}") from None

    if regions is not None:
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


def _discover_decathlon(root: Path) -> DatasetInfo | None:
    folders = [root / "imagesTr", root / "imagesTs"]
    if not any(f.is_dir() for f in folders):
        return None
    meta_path = root / "dataset.json"
    if not meta_path.is_file():
        raise DataError(f"{meta_path}: missing; MSD and nnU-Net datasets need their dataset.json")
    meta = _read_json(meta_path)
    files = {f.name: image_files(f) for f in folders if f.is_dir()}
    all_files = [p for v in files.values() for p in v]
    nnunet = "channel_names" in meta or "file_ending" in meta
    if not nnunet and all_files and all(NNUNET_RE.match(split_ext(p)[0]) for p in all_files):
        nnunet = True  # nnU-Net v1 dataset.json ("modality") with _0000 files
    convention = convention_from_dataset_json(meta, where=meta_path)
    channels = meta.get("channel_names", meta.get("modality", {}))
    try:
        modalities = _ordered(channels) if isinstance(channels, dict) else ()
    except ValueError:
        raise DataError(f"{meta_path}: channel keys must be 0, 1, ...; got {channels}") from None
    labels = {split_ext(p)[0]: p for p in image_files(root / "labelsTr")}
    cases: list[Case] = []
    for folder, paths in files.items():
        if nnunet:
            groups: dict[str, dict[int, Path]] = {}
            for p in paths:
                m = NNUNET_RE.match(split_ext(p)[0])
                if not m:
                    raise DataError(f"{p}: nnU-Net images must be named CASE_XXXX (e.g. CASE_0000)")
                groups.setdefault(m["case"], {})[int(m["ch"])] = p
            n = len(modalities) or max(len(g) for g in groups.values())
            for case_id, chans in groups.items():
                missing = [c for c in range(n) if c not in chans]
                if missing or len(chans) != n:
                    ext = split_ext(next(iter(chans.values())))[1]
                    name = f"{case_id}_{missing[0]:04d}{ext}" if missing else "extra channels"
                    raise DataError(f"{root / folder}: case {case_id} is missing {name}")
                label = labels.get(case_id) if folder == "imagesTr" else None
                cases.append(Case(case_id, tuple(chans[c] for c in range(n)), label))
        else:
            for p in paths:
                case_id = split_ext(p)[0]
                label = labels.get(case_id) if folder == "imagesTr" else None
                cases.append(Case(case_id, (p,), label))
    if not cases:
        raise DataError(f"{root}: imagesTr/ and imagesTs/ hold no .nii.gz images")
    cases.sort(key=lambda c: natural_key(c.case_id))
    _check_unique(cases, root)
    return DatasetInfo(root, "nnunet" if nnunet else "msd", modalities, convention, tuple(cases))


# --------------------------------------------------------------------------- public API
_DETECTORS = (_discover_decathlon, _discover_brats, _discover_iseg)


def _check_unique(cases: Sequence[Case], where: Path | str) -> None:
    seen: dict[str, Case] = {}
    for c in cases:
        if c.case_id in seen:
            raise DataError(
                f"{where}: case id {c.case_id!r} appears twice ({seen[c.case_id].images[0]} and "
                f"{c.images[0]}); predictions would overwrite each other"
            )
        seen[c.case_id] = c


def discover(root: str | Path) -> DatasetInfo:
    """Detect the layout of a dataset folder and list its cases.

    ``root`` may be the dataset folder, a single BraTS case folder, or a folder holding exactly
    one sub-folder that is the dataset (as archives often unpack).

    Args:
        root: dataset folder.

    Returns:
        The :class:`DatasetInfo` (cases sorted naturally: ``subject-2`` before ``subject-10``).

    Raises:
        DataError: no such folder; no layout matches (the message lists the layouts tried);
            a case misses a modality; case ids clash; unreadable ``dataset.json``.

    Example:
        >>> import tempfile
        >>> from invseg.data import synthesize
        >>> root = Path(tempfile.mkdtemp())
        >>> _ = synthesize("iseg", root, cases=2, shape=(16, 16, 16))
        >>> info = discover(root)
        >>> info.layout, [c.case_id for c in info.cases], info.modalities
        ('iseg', ['subject-1', 'subject-2'], ('T1', 'T2'))
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"{root}: no such folder")
    if not root.is_dir():
        raise DataError(f"{root}: is a file, not a dataset folder (use cases_from_paths for files)")
    for candidate in (root, _only_subfolder(root)):
        if candidate is None:
            continue
        for detect in _DETECTORS:
            info = detect(candidate)
            if info is not None:
                _check_unique(info.cases, candidate)
                return info
    raise DataError(f"{root}: matches no dataset layout; tried {_TRIED}")


def _only_subfolder(root: Path) -> Path | None:
    entries = [p for p in root.iterdir() if not p.name.startswith(".")]
    dirs = [p for p in entries if p.is_dir()]
    return dirs[0] if len(dirs) == 1 and not image_files(root) else None


def _group_files(files: Sequence[Path], layout: str | None) -> list[tuple[str | None, Case]]:
    """Group loose image files into cases by the dataset naming rules."""
    groups: dict[tuple[str, str], dict[str, Path]] = {}
    singles: list[tuple[str | None, Case]] = []
    for f in files:
        stem, _ = split_ext(f)
        m23, m20 = BRATS23_RE.match(stem), BRATS_RE.match(stem)
        mi, mn = ISEG_RE.match(stem), NNUNET_RE.match(stem)
        if m23 and layout in (None, "brats2023"):
            groups.setdefault(("brats2023", m23["case"]), {})[m23["mod"]] = f
        elif m20 and layout in (None, "brats2020", "brats2021"):
            key = layout or brats_layout_for(m20["case"], "_")
            groups.setdefault((key, m20["case"]), {})[m20["mod"]] = f
        elif mi and layout in (None, "iseg"):
            mod = {"t1": "T1", "t2": "T2", "label": "label"}[mi["mod"].lower()]
            groups.setdefault(("iseg", mi["case"].lower()), {})[mod] = f
        elif mn and layout in (None, "nnunet"):
            groups.setdefault(("nnunet", mn["case"]), {})[mn["ch"]] = f
        else:
            singles.append((layout, Case(stem, (f,), None)))
    out = list(singles)
    for (kind, case_id), mods in groups.items():
        if kind == "nnunet":
            chans = sorted(mods)
            if chans != [f"{i:04d}" for i in range(len(chans))]:
                missing = next(f"{i:04d}" for i in range(len(chans) + 1) if f"{i:04d}" not in mods)
                raise DataError(f"{case_id}_{missing}: missing channel file for case {case_id!r}")
            out.append((kind, Case(case_id, tuple(mods[c] for c in chans), None)))
            continue
        label = mods.get("seg" if kind != "iseg" else "label")
        for m in MODALITIES[kind]:
            if m not in mods:
                sep = BRATS_SEP.get(kind, "-")
                raise DataError(
                    f"{next(iter(mods.values())).parent / (case_id + sep + m)}.*: missing modality "
                    f"{m!r} for case {case_id!r}; pass all {len(MODALITIES[kind])} modality files"
                )
        out.append((kind, Case(case_id, tuple(mods[m] for m in MODALITIES[kind]), label)))
    return out


def cases_from_paths(
    paths: Sequence[str | Path], *, layout: str | None = None
) -> tuple[DatasetInfo | None, list[Case]]:
    """Cases from dataset folders, case folders and/or image files (as given on a command line).

    Folders go through :func:`discover`. Files are grouped by the dataset naming (BraTS
    ``<case>_t1.nii.gz`` ..., BraTS 2023 ``<case>-t1n.nii.gz`` ..., nnU-Net ``<case>_0000``,
    iSeg ``subject-N-T1.hdr``); any other file is a single-file case (e.g. a 4-D NIfTI) whose id
    is the file name without extension. A label file among the files (``_seg``, ``-seg``,
    ``-label``) becomes the case's label.

    Args:
        paths: folders and/or files.
        layout: force a layout (one of :data:`LAYOUTS`) instead of detecting it.

    Returns:
        ``(info, cases)``: ``info`` describes the dataset when every case comes from one layout
        whose label convention is known (else ``None``); ``cases`` in the order given.

    Raises:
        DataError: a path that does not exist or matches nothing, a missing modality, a clash
            of case ids, or a forced layout that does not fit.
        ValueError: unknown ``layout``.

    Example:
        >>> import tempfile
        >>> from invseg.data import synthesize
        >>> root = Path(tempfile.mkdtemp())
        >>> info = synthesize("brats", root, cases=1, shape=(16, 16, 16))
        >>> _, cases = cases_from_paths(info.cases[0].images)   # the 4 modality files
        >>> [(c.case_id, len(c.images)) for c in cases]
        [('BraTS20_Training_001', 4)]
    """
    if layout is not None:
        check_option("layout", layout, LAYOUTS)
    if isinstance(paths, str | Path):
        paths = [paths]
    infos: list[DatasetInfo] = []
    found: list[tuple[str | None, Case]] = []
    files: list[Path] = []
    for raw in paths:
        p = Path(raw).expanduser()
        if not p.exists():
            raise DataError(f"{p}: no such file or folder")
        if p.is_dir():
            info = discover(p)
            if layout is not None and info.layout != layout:
                raise DataError(f"{p}: is a {info.layout} dataset, not {layout}")
            infos.append(info)
            found.extend((info.layout, c) for c in info.cases)
            continue
        stem, ext = split_ext(p)
        if not ext:
            raise DataError(f"{p}: not an image (.nii.gz, .nii or Analyze .hdr/.img)")
        if ext.lower() == ".img":
            p = p.with_name(stem + ".hdr")
            if not p.exists():
                raise DataError(f"{p}: Analyze header missing for {raw}")
        if p not in files:
            files.append(p)
    found.extend(_group_files(files, layout))
    cases = [c for _, c in found]
    _check_unique(cases, "inputs")

    kinds = {k for k, _ in found}
    info: DatasetInfo | None = None
    if len(kinds) == 1 and None not in kinds and cases:
        kind = next(iter(kinds))
        if len(infos) == 1 and not files:
            info = infos[0]
        else:
            known = {i.convention for i in infos} | (
                {get_convention(LAYOUT_CONVENTION[kind])} if kind in LAYOUT_CONVENTION else set()
            )
            mods = {i.modalities for i in infos}
            if kind in MODALITIES:
                mods.add(MODALITIES[kind])
            if len(known) == 1 and len(mods) == 1:
                root = Path(os.path.commonpath([str(c.images[0].parent) for c in cases]))
                info = DatasetInfo(root, kind, mods.pop(), known.pop(), tuple(cases))
    return info, cases
