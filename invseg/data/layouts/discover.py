"""Find the cases of dataset folders, case folders and loose image files, in any layout."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from invseg.data.case import Case, DatasetInfo
from invseg.data.errors import DataError
from invseg.data.layouts.base import check_unique
from invseg.data.layouts.registry import LAYOUTS, get_layout, iter_layouts, match_file
from invseg.data.naming import image_files, split_ext

__all__ = ["cases_from_paths", "discover", "iter_cases"]


def _tried() -> str:
    return ", ".join(f"{x.name} ({x.files})" for x in iter_layouts())


def _only_subfolder(root: Path) -> Path | None:
    entries = [p for p in root.iterdir() if not p.name.startswith(".")]
    dirs = [p for p in entries if p.is_dir()]
    return dirs[0] if len(dirs) == 1 and not image_files(root) else None


def discover(root: str | Path) -> DatasetInfo:
    """Detect the layout of a dataset folder and list its cases.

    ``root`` may be the dataset folder, a single BraTS case folder, or a folder holding exactly
    one sub-folder that is the dataset (as archives often unpack). Each layout of
    :data:`~invseg.data.layouts.LAYOUTS` is asked in turn.

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
        for layout in iter_layouts():
            info = layout.discover(candidate)
            if info is not None:
                check_unique(info.cases, candidate)
                return info
    raise DataError(f"{root}: matches no dataset layout; tried {_tried()}")


def iter_cases(
    source: str | Path | DatasetInfo | Iterable[Case], *, labelled: bool | None = None
) -> Iterator[Case]:
    """Iterate over the cases of a dataset folder, a :class:`DatasetInfo` or a list of cases.

    Args:
        source: dataset folder (passed to :func:`discover`), info or cases.
        labelled: ``True``: only cases with a label; ``False``: only prediction-only cases;
            ``None``: all.

    Example:
        >>> cs = [Case("a", (Path("a.nii"),), Path("a_seg.nii")), Case("b", (Path("b.nii"),))]
        >>> [c.case_id for c in iter_cases(cs, labelled=False)]
        ['b']
    """
    if isinstance(source, str | Path):
        source = discover(source)
    cases = source.cases if isinstance(source, DatasetInfo) else source
    for case in cases:
        if labelled is None or case.has_label == labelled:
            yield case


def _group_files(files: Sequence[Path], layout: str | None) -> list[tuple[str | None, Case]]:
    """Group loose image files into cases by the layouts' naming rules."""
    groups: dict[tuple[str, str], dict[str, Path]] = {}
    out: list[tuple[str | None, Case]] = []
    for f in files:
        stem = split_ext(f)[0]
        hit = match_file(stem, layout)
        if hit is None:
            out.append((layout, Case(stem, (f,), None)))
        else:
            groups.setdefault((hit.layout, hit.case_id), {})[hit.key] = f
    for (name, case_id), found in groups.items():
        out.append((name, LAYOUTS[name].case_from_files(case_id, found)))
    return out


def _common_info(
    found: list[tuple[str | None, Case]], infos: list[DatasetInfo], files: list[Path]
) -> DatasetInfo | None:
    """One :class:`DatasetInfo` for all cases when they share a layout and a known convention."""
    kinds = {k for k, _ in found}
    cases = [c for _, c in found]
    if len(kinds) != 1 or None in kinds or not cases:
        return None
    if len(infos) == 1 and not files:
        return infos[0]
    layout = LAYOUTS[str(next(iter(kinds)))]
    known = {i.convention for i in infos}
    mods = {i.modalities for i in infos}
    if layout.convention is not None:
        known.add(layout.label_convention())
    if layout.modalities:
        mods.add(layout.modalities)
    if len(known) != 1 or len(mods) != 1:
        return None
    root = Path(os.path.commonpath([str(c.images[0].parent) for c in cases]))
    return DatasetInfo(root, layout.name, mods.pop(), known.pop(), tuple(cases))


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
        >>> info2, cases = cases_from_paths(info.cases[0].images)   # the 4 modality files
        >>> [(c.case_id, len(c.images)) for c in cases], info2.layout
        ([('BraTS20_Training_001', 4)], 'brats2020')
    """
    if layout is not None:
        layout = get_layout(layout).name
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
    check_unique([c for _, c in found], "inputs")
    return _common_info(found, infos, files), [c for _, c in found]
