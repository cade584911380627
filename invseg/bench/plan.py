"""``invseg plan``: what trains on my GPU, per memory mode and against the zoo peers.

For a config's model in each memory mode (``store``, ``checkpoint``, ``invert``) and for each
zoo model asked for, the planner (:mod:`invseg.runtime.planner`) measures the exact
saved-for-backward bytes at three small cubes (on CPU unless ``--device cuda``), extrapolates
in voxels and adds weights, gradients, Adam state and :data:`CUDA_OVERHEAD_BYTES`: the result
is the largest cubic crop at batch 1 and the largest batch at the full BraTS field of view
(4 x 240 x 240 x 155, padded to the net's multiple) within the budget.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from torch import nn

from invseg.bench.models import build
from invseg.runtime.planner import (
    CUDA_OVERHEAD_BYTES,
    ActivationFit,
    default_sizes,
    fit_activations,
    largest_cube,
    max_batch,
    param_bytes,
    parse_bytes,
)

BRATS_FOV = (240, 240, 155)
MODES = ("store", "checkpoint", "invert")
GiB = 2**30


@dataclass(frozen=True)
class Candidate:
    """A model to plan: a name, its memory mode, ``build_fn(cube)`` and its size multiple."""

    name: str
    memory: str
    build_fn: Callable[[int], nn.Module]
    multiple: int
    in_channels: int


def config_candidates(path: str | Path) -> list[Candidate]:
    """The config's model in each memory mode it supports (three for the InvRes nets).

    ``path`` is a YAML file or a packaged config name; only its model section is read.
    """
    from invseg.runtime.config import instantiate_model, resolve_target
    from invseg.tasks.config import load_config

    cfg = dict(load_config(path).to_dict()["model"])
    cls = resolve_target(str(cfg["_target_"]))
    params = inspect.signature(cls).parameters
    channels = cfg.get("channels", params["channels"].default if "channels" in params else None)
    multiple = 2 ** (len(channels) - 1) if channels else 8
    in_channels = int(cfg.get("in_channels", params["in_channels"].default))
    modes = (
        tuple(getattr(cls, "memory_modes", MODES))
        if "memory" in params
        else (str(cfg.get("memory", "store")),)
    )
    name = str(cfg["_target_"]).rsplit(".", 1)[-1]

    def make(mode: str) -> Callable[[int], nn.Module]:
        def fn(s: int) -> nn.Module:
            c = dict(cfg) | ({"memory": mode} if "memory" in params else {})
            if c.get("vae"):
                c["input_image_size"] = [s, s, s]
            return instantiate_model(c)

        return fn

    return [Candidate(name, m, make(m), multiple, in_channels) for m in modes]


def zoo_candidates(
    names: Sequence[str], *, base: int = 16, arch_crop: int = 128
) -> list[Candidate]:
    """Zoo models; DynUNet keeps the nnU-Net layout of an ``arch_crop`` cube at every size."""
    out = []
    for name in names:
        probe = build(name, in_channels=4, out_channels=3, crop=(arch_crop,) * 3, base=base)

        def fn(s: int, name: str = name) -> nn.Module:
            crop = arch_crop if name == "dynunet" else s
            return build(name, in_channels=4, out_channels=3, crop=(crop,) * 3, base=base)

        out.append(Candidate(name, probe.memory, fn, max(probe.multiple, 8), 4))
    return out


def _meta(build_fn: Callable[[int], nn.Module], s: int) -> int:
    import torch

    with torch.device("meta"):
        return param_bytes(build_fn(s))


def plan_candidate(
    cand: Candidate, budgets: Sequence[int], *, amp: str | None = None, device: str = "cpu"
) -> list[dict[str, Any]]:
    """One row per budget: largest cube (batch 1), batch at the padded BraTS FOV, byte counts."""
    mult = max(cand.multiple, 8)
    fit: ActivationFit = fit_activations(
        cand.build_fn, cand.in_channels, sizes=default_sizes(mult), amp=amp, device=device
    )
    fit = replace(fit, native=False)  # the target is a GPU
    fov = tuple(math.ceil(s / cand.multiple) * cand.multiple for s in BRATS_FOV)
    fov_params = _meta(cand.build_fn, max(fov))
    rows = []
    for budget in budgets:
        r = largest_cube(
            fit, lambda s: _meta(cand.build_fn, s), budget_bytes=budget, multiple=mult,
            overhead=CUDA_OVERHEAD_BYTES,
        )  # fmt: skip
        batch = max_batch(fit, fov_params, fov, budget_bytes=budget, overhead=CUDA_OVERHEAD_BYTES)
        rows.append({
            "model": cand.name, "memory": cand.memory, "budget_bytes": budget,
            "max_cube": r.max_cube, "activation_bytes": r.activation_bytes,
            "total_bytes": r.total_bytes, "param_bytes": r.param_bytes // 2,
            "fov": list(fov), "fov_batch": batch,
            "fov_activation_bytes": fit.activations(math.prod(fov)),
            "extrapolation_error": fit.extrapolation_error,
        })  # fmt: skip
    return rows


def plan_table(
    candidates: Sequence[Candidate],
    budgets: Sequence[int] = (12 * 10**9, 24 * 10**9, 80 * 10**9),
    *,
    amp: str | None = None,
    device: str = "cpu",
) -> list[dict[str, Any]]:
    """Rows for every candidate and budget (the 12/24/80 GB table of the docs by default)."""
    return [row for c in candidates for row in plan_candidate(c, budgets, amp=amp, device=device)]


def table_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown: largest cube per budget and whether the full BraTS FOV trains at batch 1."""
    budgets = sorted({r["budget_bytes"] for r in rows})
    head = " | ".join(f"{b / 1e9:g} GB: cube / FOV batch" for b in budgets)
    lines = [
        f"| model | memory | params M | FOV act. GiB | {head} |",
        "|---|---|---|---|" + "---|" * len(budgets),
    ]
    keys = list(dict.fromkeys((r["model"], r["memory"]) for r in rows))
    for key in keys:
        sel = {r["budget_bytes"]: r for r in rows if (r["model"], r["memory"]) == key}
        r0 = sel[budgets[0]]
        cells = [f"{sel[b]['max_cube'] or '–'} / {sel[b]['fov_batch'] or 'no'}" for b in budgets]
        lines.append(
            f"| {key[0]} | {key[1]} | {r0['param_bytes'] / 4e6:.2f} | "
            f"{r0['fov_activation_bytes'] / GiB:.2f} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines) + "\n"


def verify_cuda(cand: Candidate, cube: int, budget: int, *, amp: str | None = None) -> dict:
    """Under ``set_per_process_memory_fraction(budget)``: does ``cube`` fit, ``cube + m`` not?"""
    import torch

    from invseg.runtime.planner import measure_step

    dev = torch.device("cuda")
    total = torch.cuda.get_device_properties(dev).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, budget / total), dev)

    def fits(s: int) -> bool:
        try:
            net = cand.build_fn(s).to(dev)
            opt = torch.optim.Adam(net.parameters())
            for _ in range(2):  # the second step holds Adam state
                measure_step(net, cand.in_channels, s, amp=amp, device=dev)
                out = net(torch.randn(1, cand.in_channels, s, s, s, device=dev))
                out = out[0] if isinstance(out, tuple) else out
                out.float().mean().backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            return True
        except torch.OutOfMemoryError:
            return False
        finally:
            torch.cuda.empty_cache()

    step = max(cand.multiple, 8)
    result = {"cube": cube, "fits": fits(cube), "above_fails": not fits(cube + step)}
    torch.cuda.set_per_process_memory_fraction(1.0, dev)
    return result


def run(
    config: str | Path,
    *,
    budget: str = "12GB",
    amp: str | None = None,
    as_json: bool = False,
    models: Sequence[str] = (),
    device: str = "cpu",
) -> str:
    """The ``invseg plan`` command: returns the text (or JSON) to print."""
    budget_bytes = parse_bytes(budget)
    cands = config_candidates(config) + zoo_candidates(models)
    rows = plan_table(cands, [budget_bytes], amp=amp, device="cpu")
    if device.startswith("cuda"):
        import torch

        for cand, row in zip(cands, rows):
            if torch.cuda.is_available() and row["max_cube"]:
                row["verify"] = verify_cuda(cand, row["max_cube"], budget_bytes, amp=amp)
    if as_json:
        keys = ("max_cube", "activation_bytes", "total_bytes", "fov_batch", "verify")
        return json.dumps(
            {f"{r['model']}:{r['memory']}": {k: r[k] for k in keys if k in r} for r in rows},
            indent=2,
        )
    return f"Plan for {budget} ({budget_bytes / GiB:.1f} GiB), amp={amp}:\n\n" + table_markdown(
        rows
    )


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
    ``DynUNet`` at nnU-Net's own widths (32 .. 320) when it is among them. Exact bytes, so
    ``quick`` changes nothing; ``device`` is where the bytes are measured (the same on CPU and
    CUDA up to cuDNN workspaces, which the overhead covers).
    """
    from invseg.bench.models import DEFAULT_MODELS
    from invseg.bench.report import update_section

    names = list(models or DEFAULT_MODELS)
    cands = zoo_candidates(names, base=base)
    if "dynunet" in names:
        nnunet = zoo_candidates(["dynunet"], base=32)[0]
        cands.append(replace(nnunet, name="dynunet (nnU-Net widths 32..320)"))
    rows = plan_table(cands, device=device)
    md = (
        "## What trains on one GPU (`invseg plan`, `invseg bench plan`)\n\n"
        "Largest cubic crop at batch 1 (4 input channels, 3 outputs, float32, Adam) and the "
        "largest batch at the full BraTS field of view 4 x 240 x 240 x 155 (padded to the "
        "net's multiple) within 12, 24 and 80 GB. Every model has "
        f"{base} channels at its first level (DynUNet also at nnU-Net's 32..320). "
        "Activation bytes are measured exactly (saved-for-backward tensors) at three small "
        "cubes and extrapolated in voxels; weights, gradients, Adam state and a "
        f"{CUDA_OVERHEAD_BYTES / GiB:g} GiB CUDA overhead are added. `no`: batch 1 at the full "
        "FOV does not fit. *FOV act. GiB*: activations of one full-FOV sample. Check one "
        "model on your GPU with `invseg plan CONFIG --budget 12GB --device cuda` (it trains "
        "at the predicted crop and one step above under a memory cap).\n\n" + table_markdown(rows)
    )
    update_section(Path(output), "plan", md)
    return md
