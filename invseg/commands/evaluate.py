r"""Score predicted label maps against references: Dice, HD95 (and ASD, MHD for classes).

Per case and per region/class (BraTS-like: TC, WT, ET; iSeg: CSF, GM, WM) the scores are
those of :func:`invseg.tasks.seg_metrics.score_case`, the scorer that validation during
training and ``invseg bench quality`` use too: Dice and HD95 in mm (voxel size from the
reference header), and for class conventions (iSeg) also the average surface distance (ASD)
and the modified Hausdorff distance (MHD). Empty masks follow its one rule, the BraTS
challenge's: both empty, Dice 1 and distance 0; one empty against a non-empty one, Dice 0
and distance 373.13 mm.

References without a prediction follow one of two scorings:

* ``"brats"`` (the default for BraTS-style region labels, as the BraTS challenge scores): a
  reference without a prediction is scored as an empty prediction.
* ``"none"`` (the default for classes): references without a prediction are left out.

Either way, references without a prediction are listed in a warning on stderr and in the
summary. Predictions must be in the reference's exact geometry (shape and affine): a mismatch
is an error of that case, never a silent resampling. A case that cannot be scored (geometry,
unreadable file, label values) does not stop the others: it gets one ``error: <file>: <problem>``
line on stderr, a row with an ``error`` column and no metrics (left out of the mean), and the
``invseg evaluate`` command exits with status 1 after writing the metrics of the other cases.
The references need only their label files: a dataset case whose images are missing or
incomplete is still a reference.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from invseg.commands.evaluate_inputs import find_pairs, shown

__all__ = ["SCORINGS", "evaluate", "exit_status", "format_summary"]

#: How references without a prediction are scored (see the module docstring).
SCORINGS = ("brats", "none")


def _read_pair(pred_path: Path | None, ref_path: Path) -> tuple[Any, Any, tuple[float, ...]]:
    """``(prediction, reference, spacing)`` arrays in one geometry; no prediction: all zeros."""
    from invseg.data import DataError, read_image

    ref, r_aff, spacing = read_image(ref_path)
    if pred_path is None:
        return np.zeros(ref.shape, np.int32), ref, spacing
    pred, p_aff, _ = read_image(pred_path)
    for path, arr in ((pred_path, pred), (ref_path, ref)):
        if arr.ndim != 3:
            raise DataError(f"{path}: label map must be 3-D, got shape {arr.shape}")
    if pred.shape != ref.shape or not np.allclose(p_aff, r_aff, atol=1e-3):
        what = (
            f"shape {pred.shape} vs {ref.shape}"
            if pred.shape != ref.shape
            else f"affine differs by up to {np.abs(p_aff - r_aff).max():.3g} mm"
        )
        raise DataError(
            f"{pred_path}: geometry differs from the reference {ref_path.name} ({what}); "
            "write predictions in the reference geometry (no resampling is done here)"
        )
    return pred, ref, spacing


def _case_metrics(pred_path: Path | None, ref_path: Path, convention: Any) -> dict[str, float]:
    """The scores of one case (:func:`invseg.tasks.seg_metrics.score_case`) in native geometry."""
    import torch
    from monai.data import MetaTensor

    from invseg.tasks.seg_metrics import case_distances, region_names, score_case, target_masks

    pred, ref, spacing = _read_pair(pred_path, ref_path)

    def masks(arr: np.ndarray, path: Path | None) -> torch.Tensor:
        meta = {"filename_or_obj": str(path)} if path is not None else {}
        target = convention.to_target(MetaTensor(torch.as_tensor(arr.astype(np.int32)), meta=meta))
        return target_masks(target, convention)

    return score_case(
        masks(pred, pred_path),
        masks(ref, ref_path),
        region_names(convention),
        spacing=spacing,
        distances=case_distances(convention),
    )


def _scoring(scoring: str | None, convention: Any) -> str:
    """The scoring asked for, else ``"brats"`` for BraTS-style regions and ``"none"`` otherwise."""
    from invseg._choices import check_option

    if scoring is not None:
        return check_option("scoring", scoring, SCORINGS)
    brats_like = convention.kind == "regions" and convention.names == ("TC", "WT", "ET")
    return "brats" if brats_like else "none"


def _score(ids: list[str], preds: dict, refs: dict, convention: Any) -> list[dict]:
    """One row per case; a case that cannot be scored gets only an ``error`` (also on stderr)."""
    from invseg.commands.predict_inputs import problem_line

    rows: list[dict[str, Any]] = []
    for i in ids:
        try:
            rows.append({"case_id": i, **_case_metrics(preds.get(i), refs[i], convention)})
        except Exception as err:  # one bad case must not stop the others (interrupts pass)
            rows.append({"case_id": i, "error": problem_line(err, preds.get(i) or refs[i])})
            print(f"error: {rows[-1]['error']}", file=sys.stderr)
    return rows


def _table(rows: list[dict[str, Any]]) -> Any:
    """The rows, then ``error`` (only when a case failed), and the mean row of the scored cases."""
    import pandas as pd

    df = pd.DataFrame(rows, columns=list(dict.fromkeys(k for r in rows for k in r)))
    failed = df["error"].notna() if "error" in df else pd.Series(False, index=df.index)
    metrics = [c for c in df.columns if c not in ("case_id", "error")]
    df = df[["case_id", *metrics] + (["error"] if "error" in df else [])]
    mean = df.loc[~failed, metrics].astype(float).mean(skipna=True)
    return pd.concat([df, pd.DataFrame([{"case_id": "mean", **mean.to_dict()}])], ignore_index=True)


def _warn_missing(missing: list[str], scoring: str, pred_dir: Path) -> None:
    if missing:
        how = "scored as empty (BraTS)" if scoring == "brats" else "left out (scoring 'none')"
        print(
            f"warning: {len(missing)} reference case(s) have no prediction in {pred_dir}, "
            f"{how}: {shown(missing)}",
            file=sys.stderr,
        )


def evaluate(
    pred_dir: str | Path,
    ref_dir: str | Path,
    *,
    labels: str | None = None,
    output_csv: str | Path | None = None,
    scoring: str | None = None,
) -> Any:
    """Per-case Dice and surface distances of predictions against references.

    A case that cannot be scored (a prediction in another geometry, an unreadable file, label
    values outside the convention) does not stop the others: it prints one line
    ``error: <file>: <problem>`` on stderr, gets a row with the problem in an ``error`` column and
    no metrics, and is left out of the mean; ``df.attrs["failed"]`` lists it and
    :func:`exit_status` is 1 (what ``invseg evaluate`` exits with, after writing the CSV).

    Args:
        pred_dir: folder of predicted label maps ``<case_id>.nii.gz`` (or ``.nii``) in native
            label values, as written by ``invseg predict``.
        ref_dir: a dataset folder in any supported layout (only its label files are needed)
            or a folder of reference label maps named ``<case_id>.nii.gz``.
        labels: label convention (``"brats"``, ``"brats2023"``, ``"msd"``, ``"iseg"``). ``None``:
            the dataset's convention, or detected from the reference values (a 4 means BraTS
            2020/21, 10/150/250 iSeg; 0-3 only is ambiguous and raises).
        output_csv: where to write the table (atomically, replacing an earlier one; its
            temporaries of a killed run removed first); ``None``: not written.
        scoring: ``"brats"`` (a reference without a prediction is scored as an empty
            prediction: Dice 0 and HD95 373.13 where the reference is not empty) or ``"none"``
            (it is left out); ``None``: ``"brats"`` for the BraTS-style region conventions
            (brats, brats2023, msd), ``"none"`` for classes. Empty masks of a scored case
            follow :func:`invseg.tasks.seg_metrics.score_case` either way.

    Returns:
        A ``pandas.DataFrame`` with one row per case (sorted by ``case_id``) and a last row
        ``case_id="mean"`` (the means over the scored cases). Columns ``dice_<name>``,
        ``hd95_<name>`` (mm) and for class conventions ``asd_<name>``, ``mhd_<name>``; names are
        TC/WT/ET or CSF/GM/WM; ``error`` when a case failed. ``df.attrs`` holds ``convention``,
        ``scoring``, ``missing`` (the reference cases without a prediction), ``failed``
        (``{case_id: problem}``) and, with ``output_csv``, ``output``, ``replaced`` and
        ``removed`` (what :func:`format_summary` reports).

    Raises:
        DataError: no predictions; a prediction without a reference; no reference labels;
            undetectable convention.
        ValueError: unknown ``labels`` or ``scoring`` name.

    Example:
        >>> import tempfile, pathlib, shutil
        >>> from invseg.data import synthesize
        >>> ref = synthesize("iseg", tempfile.mkdtemp(), cases=1, shape=(16, 16, 16))
        >>> pred = pathlib.Path(tempfile.mkdtemp())
        >>> _ = shutil.copy(ref.cases[0].label, pred / "subject-1.hdr")
        >>> _ = shutil.copy(ref.cases[0].label.with_suffix(".img"), pred / "subject-1.img")
        >>> df = evaluate(pred, ref.root)
        >>> df[["dice_CSF", "dice_GM", "dice_WM"]].iloc[0].tolist(), float(df["hd95_WM"].iloc[0])
        ([1.0, 1.0, 1.0], 0.0)
    """
    from invseg.files import atomic_write_text, remove_stale_temps

    pred_dir, ref_dir = Path(pred_dir).expanduser(), Path(ref_dir).expanduser()
    csv = Path(output_csv).expanduser() if output_csv is not None else None
    removed = remove_stale_temps(csv.parent, names=[csv.name]) if csv is not None else 0
    preds, refs, convention = find_pairs(pred_dir, ref_dir, labels)
    scoring = _scoring(scoring, convention)
    missing = sorted(set(refs) - set(preds))
    _warn_missing(missing, scoring, pred_dir)
    ids = sorted(set(preds) | (set(missing) if scoring == "brats" else set()))
    rows = _score(ids, preds, refs, convention)
    failed = {r["case_id"]: r["error"] for r in rows if "error" in r}
    df = _table(rows)
    df.attrs.update(convention=convention.name, scoring=scoring, missing=missing, failed=failed)
    if csv is not None:
        df.attrs.update(output=str(csv), replaced=int(csv.exists()), removed=removed)
        atomic_write_text(csv, df.to_csv(index=False, float_format="%.6g"))
    return df


def exit_status(df: Any) -> int:
    """What ``invseg evaluate`` exits with: 1 when a case could not be scored, else 0.

    Example:
        >>> import pandas as pd
        >>> df = pd.DataFrame({"case_id": ["a", "mean"]}); df.attrs["failed"] = {"a": "a.nii: ?"}
        >>> exit_status(df)
        1
    """
    return 1 if df.attrs.get("failed") else 0


def format_summary(df: Any) -> str:
    """A short text table of the mean metrics (rows: metrics, columns: regions/classes).

    Then notes: missing predictions, failed cases and the CSV written.

    Example:
        >>> import pandas as pd
        >>> df = pd.DataFrame({"case_id": ["a", "mean"], "dice_WT": [0.9, 0.9],
        ...                    "hd95_WT": [2.0, 2.0]})
        >>> print(format_summary(df))
        1 case
                 WT
        dice 0.9000
        hd95 2.0000
    """
    import pandas as pd

    cases = df[df["case_id"] != "mean"]
    if "error" in cases:
        cases = cases[cases["error"].isna()]
    table: dict[str, dict[str, float]] = {}
    for col in df.columns:
        if col == "case_id" or "_" not in col:
            continue
        metric, name = col.split("_", 1)
        table.setdefault(metric, {})[name] = float(cases[col].mean(skipna=True))
    frame = pd.DataFrame(table).T
    conv = df.attrs.get("convention")
    head = f"{len(cases)} case{'s' if len(cases) != 1 else ''}" + (
        f" (labels: {conv})" if conv else ""
    )
    lines = [head]
    if not frame.empty:  # every case failed: no metric to show
        lines.append(frame.to_string(float_format=lambda v: f"{v:.4f}"))
    return "\n".join(lines + _notes(df.attrs))


def _notes(attrs: dict[str, Any]) -> list[str]:
    """The summary's lines on missing and failed cases and on the CSV written."""
    from invseg.files import output_notes
    from invseg.tasks.seg_metrics import EMPTY_DISTANCE

    lines, missing = [], list(attrs.get("missing") or [])
    if attrs.get("scoring") == "brats":
        lines.append(
            f"BraTS scoring: a missing or empty prediction scores Dice 0 and HD95 "
            f"{EMPTY_DISTANCE} against a non-empty reference"
            + (f"; {len(missing)} case(s) had no prediction: {shown(missing)}" if missing else "")
        )
    elif missing:
        lines.append(
            f"{len(missing)} reference case(s) without a prediction left out: {shown(missing)}"
        )
    failed = sorted(attrs.get("failed") or {})
    if failed:
        lines.append(
            f"{len(failed)} case(s) failed, not scored (see the error lines and the error "
            f"column): {shown(failed)}"
        )
    if attrs.get("output"):
        notes = output_notes(replaced=attrs.get("replaced", 0), removed=attrs.get("removed", 0))
        lines.append(
            f"metrics written to {attrs['output']}" + (f" ({'; '.join(notes)})" if notes else "")
        )
    return lines
