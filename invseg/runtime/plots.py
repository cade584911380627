"""PNG figures of a run: training curves and an image/label/prediction overlay (matplotlib Agg)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["plot_curves", "plot_overlay", "save_figure"]


def save_figure(fig, path: str | Path, *, dpi: int = 100) -> Path:
    """Save a matplotlib figure as PNG atomically (umask honoured) and close it."""
    import matplotlib.pyplot as plt

    from invseg.files import atomic_path

    path = Path(path)
    with atomic_path(path, keep_suffix=True) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_curves(metrics, path: str | Path) -> Path:
    """Plot training loss and validation Dice against optimizer steps.

    Args:
        metrics: table with columns ``step``, ``loss`` and any ``dice_*`` columns (rows without a
            value are skipped per column).
        path: PNG file to write.

    Returns:
        ``path``.

    Example:
        >>> import pandas as pd, tempfile, pathlib
        >>> df = pd.DataFrame({"step": [1, 2], "loss": [1.0, 0.5], "dice_WT": [None, 0.4]})
        >>> plot_curves(df, pathlib.Path(tempfile.mkdtemp()) / "c.png").suffix
        '.png'
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(10, 4))
    if "loss" in metrics:
        rows = metrics[["step", "loss"]].dropna()
        ax_loss.plot(rows["step"], rows["loss"], lw=1)
    ax_loss.set(xlabel="optimizer step", ylabel="training loss", title="Loss")
    for col in [c for c in metrics.columns if str(c).startswith("dice_")]:
        rows = metrics[["step", col]].dropna()
        if len(rows):
            ax_dice.plot(rows["step"], rows[col], marker="o", label=str(col)[5:])
    ax_dice.set(xlabel="optimizer step", ylabel="Dice", title="Validation Dice", ylim=(0, 1))
    if ax_dice.get_legend_handles_labels()[0]:
        ax_dice.legend()
    try:
        return save_figure(fig, Path(path))
    finally:
        plt.close(fig)


def plot_overlay(
    image: np.ndarray,
    path: str | Path,
    *,
    label: np.ndarray | None = None,
    prediction: np.ndarray | None = None,
    axis: int = 2,
    index: int | None = None,
    title: str = "",
) -> Path:
    """Image slice with the label (green) and prediction (red) outlines.

    Every non-zero value of a label map is outlined separately.

    Args:
        image: 3-D image (e.g. FLAIR).
        path: PNG file to write.
        label: 3-D reference label map of the same shape, optional.
        prediction: 3-D predicted label map of the same shape, optional.
        axis: slicing axis.
        index: slice index; by default the slice with the most labelled voxels.
        title: figure title.

    Shape:
        image, label, prediction: (X, Y, Z).

    Raises:
        ValueError: arrays of different shapes or not 3-D.

    Example:
        >>> import tempfile, pathlib
        >>> img = np.random.rand(8, 8, 8); lab = np.zeros((8, 8, 8), np.uint8); lab[2:5, 2:5, 4] = 1
        >>> plot_overlay(img, pathlib.Path(tempfile.mkdtemp()) / "o.png", label=lab).name
        'o.png'
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"plot_overlay needs a 3-D image, got shape {image.shape}.")
    maps = {"label": label, "prediction": prediction}
    for name, arr in maps.items():
        if arr is not None and np.shape(arr) != image.shape:
            raise ValueError(
                f"{name} shape {np.shape(arr)} differs from image shape {image.shape}."
            )
    if index is None:
        ref = label if label is not None else prediction
        if ref is None:
            index = image.shape[axis] // 2
        else:
            other = tuple(a for a in range(3) if a != axis)
            index = int(np.argmax((np.asarray(ref) > 0).sum(axis=other)))
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.imshow(np.take(image, index, axis=axis).T, cmap="gray", origin="lower")
    for arr, color in ((label, "lime"), (prediction, "red")):
        if arr is None:
            continue
        sl = np.take(np.asarray(arr), index, axis=axis).T
        for value in np.unique(sl[sl > 0]):
            ax.contour((sl == value).astype(float), levels=[0.5], colors=color, linewidths=1)
    ax.set_axis_off()
    ax.set_title(title or f"slice {index} (green: label, red: prediction)")
    try:
        return save_figure(fig, Path(path))
    finally:
        plt.close(fig)
