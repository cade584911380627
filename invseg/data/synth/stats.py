r"""Label statistics of a (synthetic or real) dataset, and the intensity-threshold baseline.

Used by ``docs/data.rst`` and by the tests that hold the hard preset to its documented ranges.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from invseg.data.check import read_image

if TYPE_CHECKING:
    import pandas as pd

    from invseg.data.case import Case, DatasetInfo

__all__ = ["flair_threshold_dice", "label_statistics", "summarize"]


def _arrays(info: DatasetInfo, case: Case) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """``({modality: float32 image}, native labels)`` of one labelled case."""
    if len(case.images) == 1 and len(info.modalities) > 1:  # MSD: one 4-D file
        data = read_image(case.images[0])[0]
        images = {m: data[..., k] for k, m in enumerate(info.modalities)}
    else:
        images = {m: read_image(p)[0] for m, p in zip(info.modalities, case.images)}
    images = {m.lower(): np.asarray(v, dtype=np.float32) for m, v in images.items()}
    return images, np.asarray(read_image(case.label)[0])


def _regions(info: DatasetInfo, label: np.ndarray) -> dict[str, np.ndarray]:
    conv = info.convention
    return {n: np.isin(label, values) for n, values in zip(conv.names, conv.regions)}


def _brats_row(info: DatasetInfo, case: Case) -> dict:
    from scipy import ndimage

    images, label = _arrays(info, case)
    brain = np.any([v > 0 for v in images.values()], axis=0)
    reg = _regions(info, label)
    _, lesions = ndimage.label(reg["WT"], structure=np.ones((3, 3, 3)))
    wt = int(reg["WT"].sum())
    return {
        "case": case.case_id,
        "lesions": lesions,
        "multifocal": lesions > 1,
        "wt_fraction": wt / max(int(brain.sum()), 1),
        "tc_share": int(reg["TC"].sum()) / max(wt, 1),
        "et_share": int(reg["ET"].sum()) / max(wt, 1),
        "et_empty": not reg["ET"].any(),
    }


def _iseg_row(info: DatasetInfo, case: Case) -> dict:
    images, label = _arrays(info, case)
    brain = label > 0
    row: dict = {"case": case.case_id}
    for name, value in zip(info.convention.names[1:], info.convention.class_values[1:]):
        row[f"{name.lower()}_fraction"] = float((label == value).sum() / max(brain.sum(), 1))
    gm, wm = info.convention.class_values[2:4]
    for mod, img in images.items():
        g, w = img[label == gm].mean(), img[label == wm].mean()
        row[f"{mod}_wm_gm_contrast"] = float((w - g) / g)
    return row


def label_statistics(info: DatasetInfo) -> pd.DataFrame:
    """One row of label statistics per labelled case.

    BraTS-like (``regions``): ``lesions`` (26-connected whole-tumour components),
    ``multifocal``, ``wt_fraction`` (whole tumour / brain voxels, brain = any modality > 0),
    ``tc_share`` and ``et_share`` (of the whole tumour), ``et_empty``. iSeg-like (``classes``):
    ``{csf,gm,wm}_fraction`` of the labelled brain and ``{t1,t2}_wm_gm_contrast``
    ((mean WM - mean GM) / mean GM over labelled voxels, partial volume included).

    Example:
        >>> import tempfile
        >>> from invseg.data import synthesize
        >>> info = synthesize("brats", tempfile.mkdtemp(), cases=1, shape=(32, 32, 32))
        >>> row = label_statistics(info).iloc[0]
        >>> int(row.lesions), bool(row.et_empty)
        (1, False)
    """
    import pandas as pd

    row = _iseg_row if info.convention.kind == "classes" else _brats_row
    return pd.DataFrame([row(info, c) for c in info.cases if c.label is not None])


def summarize(frame: pd.DataFrame) -> dict[str, float]:
    """Dataset-level numbers: means of flags (fractions of cases) and min/median/max of the rest.

    Example:
        >>> import pandas as pd
        >>> summarize(pd.DataFrame({"case": ["a", "b"], "et_empty": [True, False]}))
        {'cases': 2, 'et_empty': 0.5}
    """
    out: dict[str, float] = {"cases": len(frame)}
    for col in frame.columns.drop("case"):
        values = frame[col]
        if values.dtype == bool:
            out[col] = float(values.mean())
        else:
            out[f"{col}_min"] = float(values.min())
            out[f"{col}_median"] = float(values.median())
            out[f"{col}_max"] = float(values.max())
    return out


def flair_threshold_dice(info: DatasetInfo, *, steps: int = 60) -> np.ndarray:
    """Whole-tumour Dice of the best per-case FLAIR threshold (an oracle intensity baseline).

    For each case the FLAIR image is thresholded at ``steps`` brain percentiles between 50
    and 99.9, and the best Dice against the whole tumour is kept: no intensity threshold,
    even one tuned on the answer, does better.

    Returns:
        One Dice per labelled case.
    """
    dice = []
    for case in info.cases:
        if case.label is None:
            continue
        images, label = _arrays(info, case)
        flair = images.get("flair", images.get("t2f"))
        if flair is None:
            raise ValueError(f"{info.root}: no FLAIR modality among {info.modalities}")
        wt = _regions(info, label)["WT"]
        values = flair[flair > 0]
        best = 0.0
        for t in np.percentile(values, np.linspace(50, 99.9, steps)):
            pred = flair > t
            inter = np.logical_and(pred, wt).sum()
            best = max(best, 2 * inter / max(pred.sum() + wt.sum(), 1))
        dice.append(best)
    return np.asarray(dice)
