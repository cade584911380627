r"""Score predicted label maps against references: Dice, HD95 (and ASD, MHD for classes).

Per case and per region/class :math:`k` (BraTS-like: TC, WT, ET; iSeg: CSF, GM, WM), with
:math:`P_k` and :math:`G_k` the predicted and reference masks, :math:`\partial` their surfaces
(edge voxels) and :math:`d(x, \partial Y)` the distance in mm (voxel size from the reference
header) from :math:`x` to the nearest voxel of :math:`\partial Y`:

.. math::
    \mathrm{Dice}_k = \frac{2|P_k \cap G_k|}{|P_k| + |G_k|},\qquad
    \mathrm{HD95}_k = \max\Big(\mathrm{P}_{95}\{d(p, \partial G_k)\}_{p\in\partial P_k},\
        \mathrm{P}_{95}\{d(g, \partial P_k)\}_{g\in\partial G_k}\Big)

HD95 is MONAI's (and DeepMind surface-distance's) definition: the larger of the two one-way
95th percentiles (medpy and panoptica pool both distance sets instead, which can differ by a
fraction of a voxel). For class conventions (iSeg) also the average surface distance
:math:`\mathrm{ASD} = \mathrm{mean}\big(\{d(p,\partial G)\}_{p} \cup \{d(g,\partial P)\}_{g}\big)`
(both directions pooled) and the modified Hausdorff distance
:math:`\mathrm{MHD} = \max(\bar d(\partial P,\partial G), \bar d(\partial G,\partial P))`.

Empty and missing predictions follow one of two scorings:

* ``"brats"`` (the default for BraTS-style region labels, as the BraTS challenge scores): a
  reference without a prediction is scored as an empty prediction; one empty mask against a
  non-empty one scores Dice 0 and HD95 373.13; both empty: Dice 1 and HD95 0.
* ``"none"``: Dice is 1 when both masks are empty and 0 when only one is; the distances are
  undefined then (NaN, skipped in the mean); references without a prediction are left out.

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
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from invseg.commands.evaluate_inputs import find_pairs, shown

__all__ = ["BRATS_MAX_HD95", "SCORINGS", "evaluate", "exit_status", "format_summary"]

#: HD95 the BraTS challenge gives an empty mask against a non-empty one.
BRATS_MAX_HD95 = 373.13
#: How empty or missing predictions are scored (see the module docstring).
SCORINGS = ("brats", "none")


def _surface(metric: str, a: Any, b: Any, spacing: tuple[float, ...], **kw: Any) -> float:
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    fn = compute_hausdorff_distance if metric == "hd" else compute_average_surface_distance
    with warnings.catch_warnings():
        # MONAI 1.5-1.6 warns from inside its own helper (get_mask_edges); nothing to fix here.
        warnings.filterwarnings(
            "ignore", message=".*always_return_as_numpy", category=FutureWarning
        )
        return float(fn(a, b, include_background=True, spacing=list(spacing), **kw)[0, 0])


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


def _distance(metric: str, p: Any, g: Any, spacing: tuple[float, ...], scoring: str) -> float:
    """A surface distance; with an empty mask: BraTS constants or NaN (``scoring="none"``)."""
    has_p, has_g = bool(p.any()), bool(g.any())
    if has_p and has_g:
        if metric == "hd95":
            return _surface("hd", p, g, spacing, percentile=95)
        if metric == "asd":  # both directions pooled
            return _surface("asd", p, g, spacing, symmetric=True)
        return max(_surface("asd", p, g, spacing), _surface("asd", g, p, spacing))  # mhd
    if scoring == "brats" and metric == "hd95":
        return BRATS_MAX_HD95 if has_p or has_g else 0.0
    return float("nan")


def _case_metrics(
    pred_path: Path | None, ref_path: Path, convention: Any, scoring: str
) -> dict[str, float]:
    import torch
    from monai.data import MetaTensor
    from monai.metrics import DiceMetric

    pred, ref, spacing = _read_pair(pred_path, ref_path)

    def target(arr: np.ndarray, path: Path | None) -> torch.Tensor:
        meta = {"filename_or_obj": str(path)} if path is not None else {}
        t = MetaTensor(torch.as_tensor(arr.astype(np.int32)), meta=meta)
        out = torch.as_tensor(convention.to_target(t))
        if convention.kind == "classes":  # one-hot, background dropped
            out = torch.nn.functional.one_hot(out[0].long(), convention.out_channels)
            out = out.movedim(-1, 0)[1:].float()
        return out[None]  # (1, C, X, Y, Z)

    p, g = target(pred, pred_path), target(ref, ref_path)
    names = convention.names[1:] if convention.kind == "classes" else convention.names
    dice = DiceMetric(include_background=True, reduction="none", ignore_empty=False)(p, g)[0]
    row: dict[str, float] = {f"dice_{name}": float(dice[k]) for k, name in enumerate(names)}
    metrics = ("hd95", "asd", "mhd") if convention.kind == "classes" else ("hd95",)
    for k, name in enumerate(names):
        pk, gk = p[:, k : k + 1], g[:, k : k + 1]
        for metric in metrics:
            row[f"{metric}_{name}"] = _distance(metric, pk, gk, spacing, scoring)
    return row


def _scoring(scoring: str | None, convention: Any) -> str:
    """The scoring asked for, else ``"brats"`` for BraTS-style regions and ``"none"`` otherwise."""
    from invseg._choices import check_option

    if scoring is not None:
        return check_option("scoring", scoring, SCORINGS)
    brats_like = convention.kind == "regions" and convention.names == ("TC", "WT", "ET")
    return "brats" if brats_like else "none"


def _score(ids: list[str], preds: dict, refs: dict, convention: Any, scoring: str) -> list[dict]:
    """One row per case; a case that cannot be scored gets only an ``error`` (also on stderr)."""
    from invseg.commands.predict_inputs import problem_line

    rows: list[dict[str, Any]] = []
    for i in ids:
        try:
            rows.append({"case_id": i, **_case_metrics(preds.get(i), refs[i], convention, scoring)})
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
        scoring: ``"brats"`` (a missing or empty prediction scores Dice 0 and HD95 373.13) or
            ``"none"`` (NaN distances, missing cases left out); ``None``: ``"brats"`` for the
            BraTS-style region conventions (brats, brats2023, msd), ``"none"`` for classes.

    Returns:
        A ``pandas.DataFrame`` with one row per case (sorted by ``case_id``) and a last row
        ``case_id="mean"`` (NaN-skipping means of the scored cases). Columns ``dice_<name>``,
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
    from invseg.runtime.files import atomic_write_text, remove_stale_temps

    pred_dir, ref_dir = Path(pred_dir).expanduser(), Path(ref_dir).expanduser()
    csv = Path(output_csv).expanduser() if output_csv is not None else None
    removed = remove_stale_temps(csv.parent, names=[csv.name]) if csv is not None else 0
    preds, refs, convention = find_pairs(pred_dir, ref_dir, labels)
    scoring = _scoring(scoring, convention)
    missing = sorted(set(refs) - set(preds))
    if missing:
        how = "scored as empty (BraTS)" if scoring == "brats" else "left out (scoring 'none')"
        print(
            f"warning: {len(missing)} reference case(s) have no prediction in {pred_dir}, "
            f"{how}: {shown(missing)}",
            file=sys.stderr,
        )
    ids = sorted(set(preds) | (set(missing) if scoring == "brats" else set()))
    rows = _score(ids, preds, refs, convention, scoring)
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

    Then notes: undefined distances, missing predictions, failed cases and the CSV written.

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
    undefined = {
        c.split("_", 1)[1]: int(cases[c].isna().sum())
        for c in df.columns
        if c.startswith("hd95_") and cases[c].isna().any()
    }
    if undefined:
        lines.append(
            "HD95 undefined (an empty mask) and skipped in the mean: "
            + ", ".join(f"{k} in {v} case(s)" for k, v in undefined.items())
        )
    return "\n".join(lines + _notes(df.attrs))


def _notes(attrs: dict[str, Any]) -> list[str]:
    """The summary's lines on missing and failed cases and on the CSV written."""
    from invseg.runtime.files import output_notes

    lines, missing = [], list(attrs.get("missing") or [])
    if attrs.get("scoring") == "brats":
        lines.append(
            f"BraTS scoring: a missing or empty prediction scores Dice 0 and HD95 "
            f"{BRATS_MAX_HD95} against a non-empty reference"
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
