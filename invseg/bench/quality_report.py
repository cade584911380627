"""Tables and the Pareto figure of ``invseg bench quality`` (pandas in, markdown/PNG out)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

RUN_KEYS = ["model", "memory", "regime", "cases", "crop", "seed"]
TABLE_KEYS = ["model", "memory", "regime", "crop"]  # one row of a table
METRICS = ["dice_mean", "dice_wt", "dice_tc", "dice_et", "hd95"]
RUN_COLS = ["params", "activation_mib", "peak_mib", "step_s", "wall_s", "steps"]


def per_run(cases: pd.DataFrame, keys: list[str] = RUN_KEYS) -> pd.DataFrame:
    """One row per run (``keys``: model x seed x regime): metrics averaged over the held-out
    cases.

    Example:
        >>> f = pd.DataFrame({"model": ["a", "a"], "memory": "store", "regime": "r", "cases": 4,
        ...     "crop": 32, "seed": 0, "dice_mean": [0.5, 0.7], "dice_wt": 0.0, "dice_tc": 0.0,
        ...     "dice_et": 0.0, "hd95": 1.0, "params": 9, "activation_mib": 1.0,
        ...     "peak_mib": 2.0, "step_s": 0.1, "wall_s": 3.0, "steps": 5})
        >>> per_run(f)["dice_mean"].round(2).tolist()
        [0.6]
    """
    agg: dict[str, Any] = {m: "mean" for m in METRICS} | {c: "first" for c in RUN_COLS}
    return cases.groupby(keys, sort=False).agg(agg).reset_index()


def summary(cases: pd.DataFrame, keys: list[str] = TABLE_KEYS, seed: str = "seed") -> pd.DataFrame:
    """One row per row of a table (``keys``: model x regime): mean and std over held-out cases
    and seeds (``seed_std``: of the per-seed means), the runs' memory and median step time."""
    g = cases.groupby(keys, sort=False)
    out = g[METRICS].mean()
    out["dice_std"] = g["dice_mean"].std(ddof=0)
    out["seeds"] = g["seed"].nunique()
    runs = per_run(cases, [*keys, seed]).groupby(keys, sort=False)
    out["seed_std"] = runs["dice_mean"].std(ddof=0)
    out[["params", "activation_mib", "peak_mib"]] = runs[
        ["params", "activation_mib", "peak_mib"]
    ].mean()
    out["step_s"] = runs["step_s"].median()
    out["wall_s"] = runs["wall_s"].mean()
    return out.reset_index()


#: How the rows are trained, and what changed when the bench's own loop gave way to
#: ``invseg train`` (the recipe of the numbers published before that is in the git history).
RECIPE = (
    "Every row is a run of `invseg train` (the product's training loop) on the config in its "
    "run folder: AdamW (weight decay 1e-5), cosine schedule without warm-up, float32, Dice + "
    "per-channel BCE (`train.loss`, weights 1 and 1; a VAE branch adds its loss at the zoo's "
    "weight), `data.num_samples` = batch crops from one case per step, the training chain of "
    "`invseg.data.train_transforms` (random crops, flips, intensity scale/shift), every "
    "training case trains (`data.val_fraction: 0`: no validation, the final `last.pt` is "
    "scored)."
)
#: Differences from the recipe of the bench's former own loop.
RECIPE_CHANGES = (
    "Dice term: the product's `dice_loss` (sigmoid, squared denominator, smoothing 0 / 1e-5) "
    "instead of MONAI `DiceLoss(sigmoid=True)` with its defaults (plain denominator, "
    "smoothing 1e-5 / 1e-5).",
    "Sampling: each epoch's case order is drawn from (`train.seed`, epoch) by the loader of "
    "`invseg train`, and the weights are initialised after the data are read, so the random "
    "streams (initial weights, crops, augmentation) differ from the former loop's for the "
    "same seed.",
    "Cadence: `last.pt` is staged at every epoch end (one epoch = one pass over the training "
    "cases) and the divergence guard checks every loss; the former loop wrote nothing.",
    "step s: median wall time between optimizer steps in the run's `metrics.csv`, so it "
    "includes cropping and augmentation in the training process (`train.num_workers: 0`) and "
    "the epoch-end checkpoints; the former loop timed forward, backward and step only.",
    "peak MiB on CPU: the RSS increase from the start of the training loop (its first printed "
    "line: volumes cached, model and optimizer built), with freed heap returned to the system "
    "first (`malloc_trim`), so it also counts the process's first-use allocations (about "
    "50-60 MiB on CPU: kernels' scratch, TensorBoard, the epoch-end checkpoints serialised in "
    "memory); the former loop counted from after caching without the trim, so pages freed "
    "before were reused unseen (under 1 MiB for `monai_unet`, whose activations take 7.6 MiB). On "
    "CUDA it is `max_memory_allocated` over the run, as before.",
)


def quality_markdown(cases: pd.DataFrame, *, preset: dict[str, Any], device: str) -> str:
    """The ``quality`` section of the benchmarks page (with the recipe and where the configs are).

    Example:
        >>> f = pd.DataFrame({"model": ["a"], "memory": "store", "regime": "r", "cases": 4,
        ...     "crop": 32, "seed": 0, "dice_mean": 0.5, "dice_wt": 0.0, "dice_tc": 0.0,
        ...     "dice_et": 0.0, "hd95": 1.0, "params": 9, "activation_mib": 1.0,
        ...     "peak_mib": 2.0, "step_s": 0.1, "wall_s": 3.0, "steps": 5,
        ...     "config": "out/runs/r/a-seed0/config.yaml"})
        >>> "`out/runs/r/<model>-seed<seed>/config.yaml`" in quality_markdown(f, preset={},
        ...     device="cpu")
        True
    """
    s = summary(cases).sort_values("dice_mean", ascending=False)
    where = ""
    if "config" in cases.columns:
        runs = Path(str(cases["config"].iloc[0])).parent.parent.as_posix()
        where = (
            f" Configs: `{runs}/<model>-seed<seed>/config.yaml`; `invseg train CONFIG -o DIR` "
            "repeats a row (on CPU bit for bit with `OMP_NUM_THREADS=1`: the rows train with "
            "one thread)."
        )
    lines = [
        "## Quality: Dice x memory x time",
        "",
        f"Device: {device}. Recipe (same for every row): {preset}. {RECIPE}{where} Dice mean ± "
        "std over held-out cases and seeds (± std of the per-seed means); HD95 in mm (MONAI, "
        "BraTS rules for empty masks).",
        "",
        "Changes from the bench's former own training loop:",
        "",
        *[f"- {change}" for change in RECIPE_CHANGES],
        "",
        "| model | memory | regime | crop | Dice | WT | TC | ET | HD95 mm | params M "
        "| act. MiB | peak MiB | step s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in s.itertuples():
        lines.append(
            f"| {r.model} | {r.memory} | {r.regime} | {r.crop} | {r.dice_mean:.3f} ± "
            f"{r.dice_std:.3f} (± {r.seed_std:.3f}) | {r.dice_wt:.3f} | {r.dice_tc:.3f} | "
            f"{r.dice_et:.3f} | {r.hd95:.1f} | {r.params / 1e6:.2f} | {r.activation_mib:.1f} | "
            f"{r.peak_mib:.0f} | {r.step_s:.3f} |"
        )
    return "\n".join(lines) + "\n"


def quality_plot(cases: pd.DataFrame, path: Path) -> Path:
    """Pareto figure: Dice vs activation MiB and Dice vs step time, one point per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = summary(cases)
    one_regime = s["regime"].nunique() == 1
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, col, label in zip(
        axes, ["activation_mib", "step_s"], ["activation MiB at the crop", "median step (s)"]
    ):
        for r in s.itertuples():
            x = getattr(r, col)
            ax.errorbar(x, r.dice_mean, yerr=r.seed_std, fmt="o", capsize=3)
            tag = f"crop {r.crop}" if one_regime else r.regime
            ax.annotate(
                f"{r.model} ({tag})",
                (x, r.dice_mean),
                fontsize=7,
                xytext=(4, 3),
                textcoords="offset points",
            )
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel(label)
        ax.set_ylabel("held-out mean Dice")
        ax.grid(alpha=0.3)
    if one_regime:
        fig.suptitle(f"regime {s['regime'].iloc[0]}", fontsize=9)
    fig.tight_layout()
    from invseg.runtime.plots import save_figure

    return save_figure(fig, path, dpi=120)
