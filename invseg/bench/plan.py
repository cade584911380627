"""``invseg bench plan``: what trains on one GPU, for every zoo model, as a docs table.

Every zoo model is planned by :func:`invseg.runtime.plan_report.plan_row`: one real training
step measured at three small cubes (exact bytes of every allocation, on CPU unless
``device="cuda"``), extrapolated in voxels to the largest cube at batch 1 and the largest batch
at the full BraTS field of view (4 x 240 x 240 x 155, padded to the net's multiple) within 12,
24 and 80 GB on a GPU. A config's own model is planned by ``invseg plan``
(:mod:`invseg.commands.plan`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from invseg.bench.models import build
from invseg.runtime.plan_report import Candidate, fit_candidate, plan_row
from invseg.runtime.planner import CUDA_OVERHEAD_BYTES

BRATS_FOV = (240, 240, 155)
#: the models whose full-FOV step ``invseg bench plan`` also measures on CPU
FOV_CHECKED = ("partially", "fully")
GiB = 2**30


def zoo_candidates(
    names: Sequence[str], *, base: int = 16, arch_crop: int = 128
) -> list[Candidate]:
    """Zoo models; DynUNet keeps the nnU-Net layout of an ``arch_crop`` cube at every size."""
    out = []
    for name in names:
        probe = build(name, in_channels=4, out_channels=3, crop=(arch_crop,) * 3, base=base)

        def fn(shape: tuple[int, int, int], name: str = name):
            crop = (arch_crop,) * 3 if name == "dynunet" else shape
            return build(name, in_channels=4, out_channels=3, crop=crop, base=base)

        out.append(Candidate(name, probe.memory, fn, max(probe.multiple, 8), 4))
    return out


def plan_table(
    candidates: Sequence[Candidate],
    budgets: Sequence[int] = (12 * 10**9, 24 * 10**9, 80 * 10**9),
    *,
    amp: str | None = None,
    device: str = "cpu",
    sizes: Sequence[int] | None = None,
    fits: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """One row per candidate and budget (GPU target): largest cube, FOV batch, peak bytes.

    ``fits``: filled with each candidate's measured fit, by name.
    """
    rows = []
    for cand in candidates:
        fit = fit_candidate(cand, amp=amp, device=device, sizes=sizes)
        if fits is not None:
            fits[cand.name] = fit
        for budget in budgets:
            row = plan_row(cand, fit, shape=BRATS_FOV, budget_bytes=budget, fov=BRATS_FOV)
            row["param_count"] = row["param_bytes"] // 4
            rows.append(row)
    return rows


def fov_steps(
    candidates: Sequence[Candidate], fits: dict[str, Any], names: Sequence[str] = FOV_CHECKED
) -> list[dict[str, Any]]:
    """One real training step at the full BraTS field of view on CPU per model in ``names``.

    Measured like the plan's small cubes (:func:`~invseg.runtime.step_memory.measure_step_memory`)
    and compared with the plan's device-independent bytes at that shape (``graph``: what any
    device holds besides weights, gradients' final values and Adam state).
    """
    from invseg.runtime.step_memory import measure_step_memory

    rows = []
    for cand in candidates:
        if cand.name not in names:
            continue
        shape = tuple(-(-s // cand.multiple) * cand.multiple for s in BRATS_FOV)
        step = measure_step_memory(cand.build_fn(shape), cand.in_channels, shape)
        planned = fits[cand.name].graph_bytes(math.prod(shape))
        rows.append(
            {
                "model": cand.name,
                "memory": cand.memory,
                "shape": shape,
                "graph_bytes": step.graph_bytes,
                "planned_graph_bytes": planned,
            }
        )
    return rows


def fov_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The measured full-FOV graph peaks against the plan's."""
    lines = [
        "| model | memory | input | measured graph peak GiB | planned GiB | plan error |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        err = r["planned_graph_bytes"] / r["graph_bytes"] - 1
        lines.append(
            f"| {r['model']} | {r['memory']} | 4 x {' x '.join(map(str, r['shape']))} | "
            f"{r['graph_bytes'] / GiB:.2f} | {r['planned_graph_bytes'] / GiB:.2f} | "
            f"{100 * err:+.1f}% |"
        )
    return "\n".join(lines) + "\n"


def _fov_text(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return ""
    return (
        "\nOne real training step at the full field of view, measured on CPU (batch 1, float32, "
        "Adam; *graph peak*: what every device holds above weights and Adam state, CPU "
        "temporaries excluded) against the plan's line from the small cubes:\n\n"
        + fov_markdown(rows)
    )


def table_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown: per model, the full-FOV step and the largest cube / FOV batch per budget."""
    budgets = sorted({r["budget_bytes"] for r in rows})
    head = " | ".join(f"{b / 1e9:g} GB: cube / FOV batch" for b in budgets)
    lines = [
        f"| model | memory | params M | FOV saved GiB | FOV peak GiB | extrap. error | {head} |",
        "|---|---|---|---|---|---|" + "---|" * len(budgets),
    ]
    keys = list(dict.fromkeys((r["model"], r["memory"]) for r in rows))
    for key in keys:
        sel = {r["budget_bytes"]: r for r in rows if (r["model"], r["memory"]) == key}
        r0 = sel[budgets[0]]
        device_bytes = r0["peak_bytes"] - r0["overhead_bytes"]
        cells = [f"{sel[b]['max_cube'] or '–'} / {sel[b]['fov_batch'] or 'no'}" for b in budgets]
        lines.append(
            f"| {key[0]} | {key[1]} | {r0['param_count'] / 1e6:.2f} | "
            f"{r0['saved_bytes'] / GiB:.2f} | {device_bytes / GiB:.2f} | "
            f"{100 * r0['cube_extrapolation_error']:.1f}% | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines) + "\n"


def docs_section(
    *,
    quick: bool = False,
    output: str | Path = "docs/benchmarks.md",
    device: str = "cpu",
    models: Sequence[str] | None = None,
    base: int = 16,
) -> str:
    """``invseg bench plan``: the 12/24/80 GB table of every zoo model, into ``output``.

    Every zoo model (or ``models``) at ``base`` channels (our nets and the MONAI peers), plus
    ``DynUNet`` at nnU-Net's own widths (32 .. 320) when it is among them. Measured bytes,
    so ``quick`` changes nothing; ``device`` is where they are measured.
    """
    from invseg.bench.models import DEFAULT_MODELS
    from invseg.bench.report import update_section

    names = list(models or DEFAULT_MODELS)
    cands = zoo_candidates(names, base=base)
    if "dynunet" in names:
        nnunet = zoo_candidates(["dynunet"], base=32)[0]
        cands.append(replace(nnunet, name="dynunet (nnU-Net widths 32..320)"))
    fits: dict[str, Any] = {}
    rows = plan_table(cands, device=device, fits=fits)
    fov = [] if quick else fov_steps(cands, fits)
    md = (
        "## What trains on one GPU (`invseg plan`, `invseg bench plan`)\n\n"
        "Largest cubic crop at batch 1 (4 input channels, 3 outputs, float32, Adam) and the "
        "largest batch at the full BraTS field of view 4 x 240 x 240 x 155 (padded to the "
        "net's multiple) within 12, 24 and 80 GB. Every model has "
        f"{base} channels at its first level (DynUNet also at nnU-Net's 32..320). "
        "The peak of one real training step (forward, backward, Adam step) is measured "
        "allocation by allocation at three cubes and extrapolated in voxels (*extrap. error*: "
        "the line through the two smaller cubes at the largest) and split into what every "
        "device holds (saved "
        "tensors, gradients, the graph that `invert` and `checkpoint` rebuild in backward, "
        "weights, Adam state) and per-op temporaries, which a GPU keeps in its "
        f"{CUDA_OVERHEAD_BYTES / GiB:g} GiB overhead (CUDA context, cuDNN workspaces). "
        "`no`: batch 1 at the full FOV does not fit. *FOV saved*: what one full-FOV sample "
        "keeps for backward after forward; *FOV peak*: the step's peak at batch 1 without the "
        "overhead. "
        "One model, any input: `invseg plan CONFIG --shape 240 240 155 --budget 12GB`; on a "
        "GPU add `--device cuda` to train at the predicted crop and one step above under a "
        "memory cap; on a CPU, `--target cpu` measures slabs of the input's D x H, so that "
        "every convolution picks the kernel it picks on the input, and agrees with the peak "
        "RSS of a real step within 15% (`tests/runtime/test_planner.py`).\n\n"
        + table_markdown(rows)
        + _fov_text(fov)
    )
    update_section(Path(output), "plan", md)
    return md
