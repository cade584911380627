"""What ``invseg predict`` settles before any inference: cases, label values, output folder."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "check_output",
    "gather_cases",
    "input_dirs",
    "one_line",
    "output_convention",
    "plan",
    "problem_line",
    "summary",
    "writer_for",
]


def one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def problem_line(err: BaseException, where: object) -> str:
    """One line for a case that failed: a DataError's message (it names the file), else
    ``"<where>: <ErrorType>: <message>"``.

    Example:
        >>> problem_line(ValueError("bad  value "), "a.nii.gz")
        'a.nii.gz: ValueError: bad value'
    """
    from invseg.data import DataError

    if isinstance(err, DataError):
        return one_line(err)
    return f"{where}: {type(err).__name__}: {one_line(err)}"


def input_dirs(inputs: Sequence[Path], cases: Sequence[Any]) -> set[Path]:
    dirs = {Path(p).resolve() for p in inputs if Path(p).is_dir()}
    for case in cases:
        for f in case.images:
            dirs.add(Path(f).resolve().parent)
    return dirs


def _split(folder: Path) -> list[Any]:
    """A dataset folder's cases: its sub-folders (BraTS) or its files grouped by case (iSeg)."""
    from invseg.data.layouts import match_file
    from invseg.data.naming import image_files, split_ext

    dirs = sorted(p for p in folder.iterdir() if p.is_dir())
    if dirs:
        return dirs
    groups: dict[str, list[Path]] = {}
    for f in image_files(folder):
        hit = match_file(split_ext(f)[0])
        groups.setdefault(hit.case_id if hit else f.name, []).append(f)
    return list(groups.values()) or [folder]


def gather_cases(in_paths: Sequence[Path]) -> tuple[list[Any], list[Any], list[str]]:
    """``(infos, cases, errors)``: an unusable case (missing modality, ...) is one error line."""
    from invseg.data import DataError, cases_from_paths

    try:
        info, cases = cases_from_paths(in_paths)
        return [info], cases, []
    except DataError:
        pass
    infos, cases, errors = [], [], []
    for path in in_paths:
        parts = [path]
        if path.is_dir() and not (path / "dataset.json").exists():
            try:
                cases_from_paths([path])
            except DataError:  # a dataset folder with a broken case: take its cases one by one
                parts = _split(path)
        for part in parts:
            try:
                info, found = cases_from_paths(part if isinstance(part, list) else [part])
            except DataError as err:
                errors.append(one_line(err))
                continue
            infos.append(info)
            cases.extend(found)
    return infos, cases, errors


def output_convention(labels: str | None, infos: Sequence[Any], model_conv: Any) -> Any:
    """The label convention of the written maps: ``labels``, else the input's, else the model's.

    ``model_conv`` is the checkpoint's convention (or its name). Prints the choice. Raises
    ValueError when ``labels`` does not fit the model's outputs.
    """
    from invseg.data import get_convention

    model_conv = get_convention(model_conv) if isinstance(model_conv, str) else model_conv

    def fits(conv: Any) -> bool:
        return conv.kind == model_conv.kind and conv.names == model_conv.names

    found = {(i.layout, i.convention.name): i.convention for i in infos if i is not None}
    if labels is not None:
        conv, source = get_convention(labels), "--labels"
        if not fits(conv):
            raise ValueError(
                f"--labels {labels}: the model predicts {model_conv.kind} "
                f"{list(model_conv.names)}, which {conv.name} labels cannot hold; choose a "
                f"convention with the same outputs (the model's own: {model_conv.name})."
            )
    elif len(found) == 1 and fits(next(iter(found.values()))):
        (layout, _), conv = next(iter(found.items()))
        source = f"the input layout {layout}"
    else:
        conv, source = model_conv, "the checkpoint (input layout unknown or mixed)"
        if len(found) == 1:
            source = f"the checkpoint ({next(iter(found))[1]} labels do not fit this model)"
    print(f"predict: labels {conv.describe()} from {source}; override with --labels")
    return conv


def check_output(out_dir: Path) -> None:
    """Create ``out_dir`` and write a test file in it: an unusable folder fails before inference."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise ValueError(
            f"{out_dir}: output folder is not writable ({reason}); choose another folder with -o."
        ) from None


def writer_for(infos: Sequence[Any]) -> Any:
    """The input's :class:`~invseg.data.Layout` (names and writes predictions), or a generic one."""
    from invseg.data.layouts import Layout, get_layout

    names = {i.layout if i is not None else None for i in infos}
    return get_layout(names.pop()) if len(names) == 1 and None not in names else Layout("", "")


def plan(inputs: Sequence[str | Path], output: str | Path) -> tuple[list, list, list, Path, int]:
    """``(infos, cases, errors, output folder, removed)``; the folder exists and is writable.

    Temporary files that a killed earlier run left in the output folder and its
    ``probabilities/`` (only the atomic writers' own names, see
    :func:`invseg.files.remove_stale_temps`) are deleted; ``removed`` counts them.

    Raises:
        ValueError: no inputs or cases; an output folder that holds inputs or is not writable.
    """
    from invseg.files import remove_stale_temps

    in_paths = [Path(p) for p in inputs]
    if not in_paths:
        raise ValueError("no inputs given: pass case folders, a dataset folder or image files.")
    infos, cases, errors = gather_cases(in_paths)
    if not cases and not errors:
        raise ValueError(f"no cases found in {', '.join(map(str, in_paths))}.")
    out_dir = Path(output).expanduser().resolve()
    if out_dir in input_dirs(in_paths, cases):
        raise ValueError(
            f"output folder '{output}' holds input images; choose another folder "
            "with -o so no input can be overwritten."
        )
    check_output(out_dir)
    removed = remove_stale_temps(out_dir) + remove_stale_temps(out_dir / "probabilities")
    return infos, cases, errors, out_dir, removed


def summary(
    done: int,
    total: int,
    out: Path,
    *,
    failed: int,
    replaced: int,
    skipped: int,
    removed: int = 0,
) -> str:
    """The last line of ``invseg predict``.

    Example:
        >>> summary(3, 4, Path("out"), failed=1, replaced=2, skipped=0)
        'predict: wrote 3 of 4 cases to out (1 failed; replaced 2 earlier results)'
    """
    from invseg.files import output_notes

    notes = [f"{failed} failed"] if failed else []
    notes += output_notes(replaced=replaced)
    if skipped:
        notes.append(f"skipped {skipped} with an existing result")
    notes += output_notes(removed=removed)
    return f"predict: wrote {done} of {total} cases to {out}" + (
        f" ({'; '.join(notes)})" if notes else ""
    )
