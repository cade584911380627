"""The report of ``invseg bench nnunet`` (:mod:`invseg.bench.nnunet`): per-run and per-variant
tables, the verdict, the docs section and the command that reproduces it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from invseg.bench import quality_report
from invseg.bench.nnunet import PRESETS, Recipe

__all__ = ["nnunet_markdown", "per_run", "reproduce", "section_name", "summary", "verdict"]

#: one row of the table: a variant (its network, patch and batch)
ROW_KEYS = ["variant", "network", "patch", "batch"]


def per_run(cases: Any) -> Any:
    """One row per variant x seed: metrics averaged over the held-out cases."""
    return quality_report.per_run(cases, [*ROW_KEYS, "seed"])


def summary(cases: Any) -> Any:
    """One row per variant: means over cases and seeds, ``dice_std`` over both, ``seed_std`` of
    the per-seed means, memory means and the median step."""
    return quality_report.summary(cases, ROW_KEYS)


def verdict(s: Any) -> str:
    """Who wins on held-out Dice, by how much and where (the largest region gap), at what cost.

    Example:
        >>> import pandas as pd
        >>> s = pd.DataFrame({"variant": ["nnunet", "fully"], "dice_mean": [0.8, 0.7],
        ...     "dice_wt": [0.9, 0.9], "dice_tc": [0.8, 0.6], "dice_et": [0.7, 0.6],
        ...     "seed_std": [0.01, 0.02], "activation_mib": [100.0, 25.0]})
        >>> verdict(s).split(";")[0]
        'nnunet wins on held-out Dice (0.800)'
    """
    s = s.sort_values("dice_mean", ascending=False).reset_index(drop=True)
    best = s.iloc[0]
    parts = [f"{best['variant']} wins on held-out Dice ({best['dice_mean']:.3f})"]
    for _, r in s.iloc[1:].iterrows():
        gaps = {k.split("_")[1].upper(): best[k] - r[k] for k in ("dice_wt", "dice_tc", "dice_et")}
        where = max(gaps, key=gaps.get)
        spread = max(float(best["seed_std"]), float(r["seed_std"]))
        within = "within" if best["dice_mean"] - r["dice_mean"] <= spread else "beyond"
        seeds = f"{within} the seed spread of {spread:.3f}" if spread > 0 else "one seed"
        ratio = r["activation_mib"] / best["activation_mib"]
        parts.append(
            f"{r['variant']} is {best['dice_mean'] - r['dice_mean']:.3f} lower ({seeds}; most "
            f"on {where}, {gaps[where]:+.3f}) with {ratio:.2f}x the activation memory of "
            f"{best['variant']}"
        )
    blank = [
        r["variant"] for _, r in s.iterrows() if r[["dice_wt", "dice_tc", "dice_et"]].max() == 0
    ]
    note = (
        f" {', '.join(blank)}: no tumour predicted on any held-out case (HD95 by the BraTS rule "
        "for an empty prediction); its training has not left the all-background start at this "
        "schedule, so the table does not rank it against a trained net."
    )
    return "; ".join(parts) + "." + (note if blank else "")


def section_name(recipe: Recipe) -> str:
    """The benchmarks page's section for ``recipe``: ``nnunet``, or with its step count when
    ``--steps`` changed a preset's (so a longer run does not replace the preset's table).

    Example:
        >>> section_name(PRESETS["quick"]), section_name(replace(PRESETS["quick"], iterations=60))
        ('nnunet', 'nnunet-steps600')
    """
    changed = any(replace(recipe, iterations=p.iterations) == p != recipe for p in PRESETS.values())
    return f"nnunet-steps{recipe.epochs * recipe.iterations}" if changed else "nnunet"


def reproduce(recipe: Recipe) -> str:
    """The flags of ``invseg bench nnunet`` that give ``recipe`` (``--steps``: iterations).

    Example:
        >>> reproduce(replace(PRESETS["quick"], iterations=2))
        '--quick --steps 2 '
    """
    for name, preset in PRESETS.items():
        if replace(recipe, iterations=preset.iterations) == preset:
            flags = "--quick " if name == "quick" else ""
            steps = recipe.iterations != preset.iterations
            return flags + (f"--steps {recipe.iterations} " if steps else "")
    return "(a custom recipe, see recipe.json: invseg.bench.nnunet.run(recipe=...)) "


def nnunet_markdown(cases: Any, *, recipe: Recipe, device: str, output: Path) -> str:
    """The ``nnunet`` section of the benchmarks page: recipe, table, verdict, commands."""
    s = summary(cases).sort_values("dice_mean", ascending=False)
    batch = int(s["batch"].iloc[0])
    features = f"{list(recipe.features)}[:n_stages]" if recipe.features else "nnU-Net's own"
    lines = [
        "## Inside nnU-Net v2: PlainConvUNet vs invseg's nets, "
        f"{recipe.epochs * recipe.iterations} steps",
        "",
        f"Device: {device}. Data: synthetic BraTS (`{recipe.data}` preset, "
        f"{'x'.join(map(str, recipe.shape))} voxels at 1 mm), {recipe.cases} training cases "
        f"(imagesTr), {recipe.test_cases} held-out cases. Plans: nnU-Net's "
        f"`nnUNetv2_plan_and_preprocess` (3d_fullres), `features_per_stage` {features}; "
        "the invseg rows use the same plans with the network swapped as `invseg nnunet plans` "
        "swaps it (`memory: invert`, patch kept; `*_budget` rows: the larger patch "
        "`invseg nnunet plans --budget` picks for the peak of nnU-Net's own net at its "
        "patch). Training: nnU-Net's own `nnUNetTrainer` "
        f"(fold `all`), shortened to {recipe.epochs} epochs x {recipe.iterations} iterations "
        f"({recipe.epochs * recipe.iterations} steps at batch {batch}; nnU-Net's default is "
        "1000 x 250), everything else nnU-Net's: SGD (Nesterov, momentum 0.99, lr 1e-2, poly "
        "schedule), its augmentation, Dice + BCE on the regions, deep supervision. Prediction: "
        "`nnUNetPredictor` (no mirroring). Scoring: invseg's `score_case` (Dice per region, "
        "HD95 in mm, BraTS rules for empty masks). Dice mean ± std over held-out cases and "
        "seeds (± std of the per-seed means). Activation MiB: bytes saved for backward by one "
        "training forward at batch x patch; peak MiB: "
        + ("`torch.cuda.max_memory_allocated` over training; " if device.startswith("cuda")
           else "RSS increase from the first training step (nnU-Net's data loading and "
           "augmentation run in the training process, `nnUNet_n_proc_DA=0`); ")
        + "step s: median `train_step` wall time.",
        "",
        "| variant | network | patch | seeds | Dice | WT | TC | ET | HD95 mm | params M "
        "| act. MiB | peak MiB | step s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in s.itertuples():
        lines.append(
            f"| {r.variant} | {r.network} | {r.patch} | {r.seeds} | {r.dice_mean:.3f} ± "
            f"{r.dice_std:.3f} (± {r.seed_std:.3f}) | {r.dice_wt:.3f} | {r.dice_tc:.3f} | "
            f"{r.dice_et:.3f} | {r.hd95:.1f} | {r.params / 1e6:.2f} | {r.activation_mib:.1f} | "
            f"{r.peak_mib:.0f} | {r.step_s:.3f} |"
        )
    seeds, full = int(s["seeds"].max()), PRESETS["full"]
    lines += [
        "",
        verdict(s),
        "",
        f"Each run's plans: `{output.as_posix()}/results/seed<S>/Dataset990_BraTSHardBench/"
        "nnUNetTrainer__<plans>__3d_fullres/plans.json`. Reproduce:",
        "",
        f"    invseg bench nnunet {reproduce(recipe)}--seeds {seeds} -o {output.as_posix()} "
        "--docs docs/benchmarks.md",
        "    invseg bench nnunet --device cuda --seeds 2 -o bench_nnunet_gpu "
        f"--docs docs/benchmarks.md  # one GPU: {'x'.join(map(str, full.shape))}, "
        "nnU-Net's features, "
        f"{full.epochs} x {full.iterations} steps",
    ]
    return "\n".join(lines) + "\n"
