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
is a :class:`~invseg.data.DataError`, never a silent resampling.
"""

from __future__ import annotations

import re
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["BRATS_MAX_HD95", "SCORINGS", "evaluate", "format_summary"]

#: HD95 the BraTS challenge gives an empty mask against a non-empty one.
BRATS_MAX_HD95 = 373.13
#: How empty or missing predictions are scored (see the module docstring).
SCORINGS = ("brats", "none")
_ISEG_CASE = re.compile(r"^subject-\d+$", re.IGNORECASE)


def _label_folder(folder: Path) -> dict[str, Path]:
    from invseg.data.naming import image_files, split_ext

    return {split_ext(p)[0]: p for p in image_files(folder)}


def _references(ref_dir: Path) -> tuple[dict[str, Path], Any]:
    """``({case_id: label file}, convention or None)`` from a dataset or a folder of labels."""
    from invseg.data import DataError, discover

    if not ref_dir.is_dir():
        raise DataError(f"{ref_dir}: no such folder")
    try:
        info = discover(ref_dir)
    except DataError:
        files = _label_folder(ref_dir)
        if not files:
            raise
        return files, None
    refs = {c.case_id: c.label for c in info.cases if c.label is not None}
    if not refs:
        raise DataError(f"{ref_dir}: the {info.layout} dataset has no label files to compare to")
    return refs, info.convention


def _detect(refs: dict[str, Path]) -> Any:
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


def _pairs(pred_dir: Path, ref_dir: Path, labels: str | None) -> tuple[dict, dict, Any]:
    """``({case: prediction}, {case: reference}, convention)``; every prediction has a reference."""
    from invseg.data import DataError, get_convention

    if not pred_dir.is_dir():
        raise DataError(f"{pred_dir}: no such folder of predictions")
    preds = _label_folder(pred_dir)
    if not preds:
        raise DataError(f"{pred_dir}: holds no prediction files (<case_id>.nii.gz)")
    refs, dataset_convention = _references(ref_dir)
    extra = sorted(set(preds) - set(refs))
    if extra:
        raise DataError(
            f"{pred_dir}: {len(extra)} prediction(s) have no reference in {ref_dir}: "
            + _shown(extra)
        )
    if labels is not None:
        return preds, refs, get_convention(labels)
    if dataset_convention is not None:
        return preds, refs, dataset_convention
    return preds, refs, _detect({i: refs[i] for i in sorted(preds)})


def _shown(ids: list[str], n: int = 5) -> str:
    return ", ".join(ids[:n]) + (f" ... ({len(ids) - n} more)" if len(ids) > n else "")


def _scoring(scoring: str | None, convention: Any) -> str:
    """The scoring asked for, else ``"brats"`` for BraTS-style regions and ``"none"`` otherwise."""
    from invseg._choices import check_option

    if scoring is not None:
        return check_option("scoring", scoring, SCORINGS)
    brats_like = convention.kind == "regions" and convention.names == ("TC", "WT", "ET")
    return "brats" if brats_like else "none"


def evaluate(
    pred_dir: str | Path,
    ref_dir: str | Path,
    *,
    labels: str | None = None,
    output_csv: str | Path | None = None,
    scoring: str | None = None,
) -> Any:
    """Per-case Dice and surface distances of predictions against references.

    Args:
        pred_dir: folder of predicted label maps ``<case_id>.nii.gz`` (or ``.nii``) in native
            label values, as written by ``invseg predict``.
        ref_dir: a dataset folder in any supported layout (its label files are used) or a
            folder of reference label maps named ``<case_id>.nii.gz``.
        labels: label convention (``"brats"``, ``"brats2023"``, ``"msd"``, ``"iseg"``). ``None``:
            the dataset's convention, or detected from the reference values (a 4 means BraTS
            2020/21, 10/150/250 iSeg; 0-3 only is ambiguous and raises).
        output_csv: where to write the table (atomically); ``None``: not written.
        scoring: ``"brats"`` (a missing or empty prediction scores Dice 0 and HD95 373.13) or
            ``"none"`` (NaN distances, missing cases left out); ``None``: ``"brats"`` for the
            BraTS-style region conventions (brats, brats2023, msd), ``"none"`` for classes.

    Returns:
        A ``pandas.DataFrame`` with one row per scored case (sorted by ``case_id``) and a last
        row ``case_id="mean"`` (NaN-skipping means). Columns ``dice_<name>``, ``hd95_<name>``
        (mm) and for class conventions ``asd_<name>``, ``mhd_<name>``; names are TC/WT/ET or
        CSF/GM/WM. ``df.attrs`` holds ``convention``, ``scoring`` and ``missing`` (the
        reference cases without a prediction).

    Raises:
        DataError: no predictions; a prediction without a reference; unreadable files;
            geometry mismatch; label values outside the convention; undetectable convention.
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
    import pandas as pd

    pred_dir, ref_dir = Path(pred_dir).expanduser(), Path(ref_dir).expanduser()
    preds, refs, convention = _pairs(pred_dir, ref_dir, labels)
    scoring = _scoring(scoring, convention)
    missing = sorted(set(refs) - set(preds))
    if missing:
        how = "scored as empty (BraTS)" if scoring == "brats" else "left out (scoring 'none')"
        print(
            f"warning: {len(missing)} reference case(s) have no prediction in {pred_dir}, "
            f"{how}: {_shown(missing)}",
            file=sys.stderr,
        )
    ids = sorted(set(preds) | (set(missing) if scoring == "brats" else set()))
    rows = [
        {"case_id": i, **_case_metrics(preds.get(i), refs[i], convention, scoring)} for i in ids
    ]
    df = pd.DataFrame(rows)
    mean = df.drop(columns="case_id").mean(skipna=True)
    df = pd.concat([df, pd.DataFrame([{"case_id": "mean", **mean.to_dict()}])], ignore_index=True)
    df.attrs.update(convention=convention.name, scoring=scoring, missing=missing)
    if output_csv is not None:
        from invseg.runtime.files import atomic_write_text

        atomic_write_text(Path(output_csv), df.to_csv(index=False, float_format="%.6g"))
    return df


def format_summary(df: Any) -> str:
    """A short text table of the mean metrics (rows: metrics, columns: regions/classes).

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
    lines = [head, frame.to_string(float_format=lambda v: f"{v:.4f}")]
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
    missing = list(df.attrs.get("missing") or [])
    if df.attrs.get("scoring") == "brats":
        lines.append(
            f"BraTS scoring: a missing or empty prediction scores Dice 0 and HD95 "
            f"{BRATS_MAX_HD95} against a non-empty reference"
            + (f"; {len(missing)} case(s) had no prediction: {_shown(missing)}" if missing else "")
        )
    elif missing:
        lines.append(
            f"{len(missing)} reference case(s) without a prediction left out: {_shown(missing)}"
        )
    return "\n".join(lines)
