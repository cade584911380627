"""``invseg bench quality``: held-out Dice x memory x time for every zoo model, one recipe.

Every row is a run of ``invseg train`` (:func:`invseg.commands.train.train`, the one training
loop of :mod:`invseg.runtime.loop`) on a config built by
:func:`invseg.bench.quality_config.row_config`: the same split of generated BraTS-like cases,
loss (Dice + per-channel BCE, ``train.loss``: the regions overlap, so no softmax
cross-entropy), AdamW, cosine schedule, step budget, crop and augmentation for every model, for
several seeds. The run folder ``<output>/runs/<regime>/<model>-seed<seed>/`` keeps the config
(``config.yaml``), ``last.pt``, ``metrics.csv`` and the training log (``train.log``);
``invseg train <that config.yaml> -o DIR`` repeats the row (on CPU bit for bit with one
intra-op thread, ``OMP_NUM_THREADS=1``, as the rows train). The final weights (``last.pt``:
no validation split, so no model selection) are scored on the held-out cases by
:func:`invseg.tasks.seg_metrics.score_case`, as validation and ``invseg evaluate`` score them:
Dice and HD95 in mm (at the 1 mm of :func:`invseg.data.eval_transforms`), with the BraTS rules
for empty masks (both empty: Dice 1 and HD95 0; one empty: Dice 0 and HD95 373.13).

Each run is a fresh spawned process (``workers`` at a time), so peak memory is the run's own:
CUDA ``max_memory_allocated``, else the peak RSS increase sampled from the start of the
training loop (its first printed line: training volumes cached, model and optimizer built; so
weights and cache are not counted, Adam state, gradients and activations are). Activation MiB
are the exact saved-for-backward bytes of one training forward at the crop
(:func:`invseg.runtime.planner.measure_step`); step seconds are the median wall time between
optimizer steps in the run's ``metrics.csv``.

Presets (:data:`PRESETS`), one command each per regime:

* ``quick`` (2 CPU cores, 20-40 minutes for the 11 models x 3 seeds): 48x48x40 volumes,
  16 training and 6 test cases, crop 32^3, batch 2, base 8 channels, 200 steps, lr 5e-3:
  ``invseg bench quality --quick -o bench_quality`` (add ``--cases 4``, ``--budget 32MB``:
  at 32 MB of training memory, weights, Adam state and activations, the crops range from 16^3
  to 48^3, while 256 MB lets every model reach the 48^3 cap; ``--steps 600`` for a longer
  schedule; ``--models partially_deep fully_deep fully_lift`` for the opt-in rows: 4 blocks
  per level, and Fully-InvRes with ``lift=True``).
* ``full`` (one GPU): native 240x240x155 volumes, 20 test cases, crop 128^3, batch 2, base 16,
  4000 steps, lr 1e-3, sliding-window overlap 0.5:
  ``invseg bench quality --device cuda -o bench_quality_gpu --docs docs/benchmarks.md``, then
  again with ``--cases 4`` and with ``--budget 12GB`` (every model at its largest crop).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from invseg.bench.harness import FirstWrite, PeakRSS
from invseg.bench.models import DEFAULT_MODELS, ZOO, build
from invseg.bench.quality_config import row_config


@dataclass(frozen=True)
class Preset:
    """One training recipe, shared by every row."""

    shape: tuple[int, int, int]  # generated volume size (or the native 240x240x155)
    crop: int  # cubic training crop (and sliding-window size)
    batch: int  # crops per step (from one case)
    steps: int
    lr: float
    test_cases: int
    base: int  # first-level channels of every model
    overlap: float  # sliding-window overlap at test time
    pool: int = 16  # training cases generated (``--cases`` takes the first ones)
    data: str = "hard"  # synthetic preset of the cases (:func:`invseg.data.synthesize`)


#: ``quick``: 2 CPU cores, 20-40 min for 11 models x 3 seeds; ``full``: one GPU at native size.
PRESETS = {
    "quick": Preset((48, 48, 40), 32, 2, 200, 5e-3, 6, 8, 0.25, data="medium"),
    "full": Preset((240, 240, 155), 128, 2, 4000, 1e-3, 20, 16, 0.5),
}


@dataclass(frozen=True)
class Job:
    """One training run: a model, a seed and a regime, and where its cases and run folder are."""

    model: str
    seed: int
    regime: str
    cases: int
    crop: int
    preset: Preset
    root: str  # folder of exactly the training cases (``data.root``)
    test: tuple[dict, ...]
    device: str
    threads: int
    run_dir: str  # ``output.dir``: config.yaml, last.pt, metrics.csv, train.log


def logits_of(net: Any) -> Callable[[Any], Any]:
    """``x -> logits`` of a network that may return ``(logits, vae_loss)`` (sliding windows)."""

    def predict(x: Any) -> Any:
        out = net(x)
        return out[0] if isinstance(out, (tuple, list)) else out

    return predict


def _evaluate(predict: Callable[[Any], Any], job: Job, device) -> list[dict[str, Any]]:
    """Score ``predict`` (``x -> logits``, eval mode) on the held-out cases of ``job``."""
    import torch
    from monai.inferers import sliding_window_inference

    from invseg.data import eval_transforms, get_convention
    from invseg.tasks.seg_metrics import logit_masks, region_names, score_case, target_masks

    conv = get_convention("brats")
    names, mm = region_names(conv), (1.0, 1.0, 1.0)  # volumes resampled to 1 mm voxels
    t, rows = eval_transforms(conv, spacing=mm), []
    with torch.no_grad():
        for case in job.test:
            d = t(dict(case))
            x = torch.as_tensor(d["image"])[None].to(device)
            logits = sliding_window_inference(
                x, (job.crop,) * 3, 4, predict, overlap=job.preset.overlap
            )
            pred = logit_masks(logits[0].cpu(), conv)
            score = score_case(pred, target_masks(d["label"], conv), names, spacing=mm)
            dice = [score[f"dice_{n}"] for n in names]
            hd = [score[f"hd95_{n}"] for n in names]
            row = {"case": case["case_id"], "dice_mean": float(np.mean(dice))}
            row |= {f"dice_{n.lower()}": v for n, v in zip(names, dice)}
            row |= {"hd95": float(np.mean(hd))}
            row |= {f"hd95_{n.lower()}": v for n, v in zip(names, hd)}
            rows.append(row)
    return rows


def _preload() -> None:
    """Import what ``invseg train`` imports lazily, so its RSS peak is the run's own."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # curves.png
    import pandas  # noqa: F401
    from monai.data import CacheDataset  # noqa: F401
    from torch.utils.tensorboard import SummaryWriter  # noqa: F401


def step_seconds(run_dir: Path) -> tuple[int, float]:
    """(optimizer steps, median seconds between them) from a run's ``metrics.csv``."""
    import pandas as pd

    rows = pd.read_csv(run_dir / "metrics.csv")
    t = rows.dropna(subset=["loss"])["time_s"].to_numpy()
    gaps = np.diff(t) if len(t) > 1 else t
    return len(t), float(statistics.median(gaps.tolist()))


def _train(config: dict[str, Any], run_dir: Path, device) -> tuple[int, float]:
    """``invseg train config -o run_dir`` (log in ``train.log``): (peak bytes, wall seconds)."""
    import torch

    from invseg.commands.train import train

    if run_dir.exists():  # this bench's own earlier row: replaced
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    wall = time.perf_counter()
    with open(run_dir / "train.log", "w") as log, PeakRSS() as rss:
        with contextlib.redirect_stdout(FirstWrite(log, rss.mark)), contextlib.redirect_stderr(log):
            train(config, output=run_dir)
    wall = time.perf_counter() - wall
    cuda = device.type == "cuda"
    return (torch.cuda.max_memory_allocated(device) if cuda else rss.peak - rss.start), wall


def trained_net(config: dict[str, Any], run_dir: Path, device) -> Any:
    """The network of ``config`` with the final weights of its run (``last.pt``), eval mode."""
    from invseg.runtime.checkpoint import load_checkpoint
    from invseg.runtime.config import instantiate_model

    net = instantiate_model(config["model"])
    net.load_state_dict(load_checkpoint(run_dir / "last.pt")["model"])
    return net.to(device).eval()


def run_job(job: Job) -> list[dict[str, Any]]:
    """Train one row with ``invseg train`` and score it; one dict per held-out case."""
    import torch

    from invseg.runtime.config import instantiate_model
    from invseg.runtime.planner import measure_step

    torch.set_num_threads(job.threads)
    device, run_dir = torch.device(job.device), Path(job.run_dir)
    config = row_config(
        job.model, root=job.root, crop=job.crop, preset=job.preset, seed=job.seed,
        device=job.device, run_dir=run_dir,
    )  # fmt: skip
    _preload()
    peak, wall = _train(config, run_dir, device)
    steps, step_s = step_seconds(run_dir)
    net = trained_net(config, run_dir, device)
    rows = _evaluate(logits_of(net), job, device)
    probe = instantiate_model(config["model"]).to(device)  # after training: not in its peak
    act = measure_step(probe, 4, job.crop, batch=job.preset.batch, device=device)[0]
    run = {
        "model": job.model, "memory": ZOO[job.model].memory, "seed": job.seed,
        "regime": job.regime, "cases": job.cases, "crop": job.crop, "steps": steps,
        "params": sum(p.numel() for p in net.parameters()), "activation_mib": act / 2**20,
        "peak_mib": peak / 2**20, "step_s": step_s, "wall_s": wall,
        "config": str(run_dir / "config.yaml"),
    }  # fmt: skip
    return [run | row for row in rows]


def make_data(out: Path, preset: Preset, train_cases: int) -> tuple[Path, list[dict]]:
    """Generate (or reuse) the cases in ``out/data``; returns the training folder and test cases.

    The training folder ``out/train<n>`` links the first ``train_cases`` case folders (the runs'
    ``data.root``: ``invseg train`` reads every case of its root); the test cases come after the
    whole pool, so they are the same for every regime.
    """
    from invseg.data import case_dicts, synthesize

    pool = max(preset.pool, train_cases)
    info = synthesize(
        "brats", out / "data", cases=pool + preset.test_cases, shape=preset.shape, seed=0,
        preset=preset.data,
    )  # fmt: skip
    train_root = out / f"train{train_cases}"
    train_root.mkdir(parents=True, exist_ok=True)
    for case in info.cases[:train_cases]:
        folder = Path(case.images[0]).parent.resolve()
        link = train_root / folder.name
        if link.is_symlink():  # an earlier run's link: point it at this pool
            link.unlink()
        if not link.exists():
            link.symlink_to(folder, target_is_directory=True)
    return train_root, case_dicts(info.cases)[pool:]


def plan_crops(models: list[str], budget: int, preset: Preset, device: str) -> dict[str, int]:
    """Largest cubic crop per model within ``budget`` bytes (capped at the volume size)."""
    from invseg.runtime.planner import plan_model

    cap = max(preset.shape)
    crops = {}
    for name in models:
        probe = build(name, in_channels=4, out_channels=3, crop=(cap,) * 3, base=preset.base)

        def make(s: int, name: str = name):
            return build(name, in_channels=4, out_channels=3, crop=(s,) * 3, base=preset.base)

        plan = plan_model(
            make, 4, budget_bytes=budget, batch=preset.batch, device=device,
            multiple=probe.multiple, limit=cap,
        )  # fmt: skip
        if plan.max_cube is not None:
            crops[name] = plan.max_cube
    return crops


def run(
    *,
    quick: bool = True,
    output: str | Path = "bench_quality",
    cases: int = 16,
    budget: str | None = None,
    seeds: int = 3,
    device: str = "cpu",
    models: list[str] | None = None,
    workers: int | None = None,
    docs: str | Path | None = None,
    steps: int | None = None,
    preset: Preset | None = None,
) -> str:
    """Train every model (``models``, default the whole zoo) for ``seeds`` seeds; write results.

    Writes ``output/quality.csv`` (one row per model x seed x regime),
    ``output/quality_cases.csv`` (per held-out case; its ``config`` column names the row's
    ``config.yaml``), ``output/quality.png``, the run folders
    ``output/runs/<regime>/<model>-seed<seed>/`` of ``invseg train`` (a row run again replaces
    its folder) and, when ``docs`` is given, the ``quality`` section of that markdown page.
    Returns the markdown. ``steps`` other than the preset's trains longer (or shorter) with the
    same schedule shape; the regime is then named e.g. ``cases16-steps600`` so its section does
    not replace the preset's.
    """
    import pandas as pd

    from invseg.bench.quality_report import per_run, quality_markdown, quality_plot
    from invseg.files import atomic_write_text
    from invseg.runtime.planner import parse_bytes

    if steps is not None and int(steps) < 1:
        raise ValueError(f"--steps must be >= 1, got {steps}")
    preset = preset or PRESETS["quick" if quick else "full"]
    longer = f"-steps{int(steps)}" if steps and int(steps) != preset.steps else ""
    preset = replace(preset, steps=int(steps)) if steps else preset
    names = list(models or DEFAULT_MODELS)
    for n in names:
        build(n, in_channels=4, out_channels=3, crop=(preset.crop,) * 3, base=preset.base)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    train_root, test = make_data(out, preset, int(cases))
    crops = {n: preset.crop for n in names}
    regime = f"cases{int(cases)}{longer}"
    if budget is not None:
        crops = plan_crops(names, parse_bytes(budget), preset, device)
        regime = f"budget{budget}{longer}"
    cuda = device.startswith("cuda")
    workers = workers or (1 if cuda else max(1, min(2, os.cpu_count() or 1)))
    runs = out / "runs" / regime
    jobs = [
        Job(n, s, regime, int(cases), crops[n], preset, str(train_root), tuple(test), device, 1,
            str(runs / f"{n}-seed{s}"))
        for s in range(int(seeds))
        for n in names
        if n in crops
    ]  # fmt: skip
    rows: list[dict] = []
    ctx = get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx, max_tasks_per_child=1) as pool:
        for result in pool.map(run_job, jobs):
            rows += result
            r = result[0]
            print(f"{r['model']:>22} seed {r['seed']}: dice "
                  f"{np.mean([x['dice_mean'] for x in result]):.3f} in {r['wall_s']:.0f} s; "
                  f"config {r['config']}", flush=True)  # fmt: skip
    frame = pd.DataFrame(rows)
    atomic_write_text(out / "quality_cases.csv", frame.to_csv(index=False))
    atomic_write_text(out / "quality.csv", per_run(frame).to_csv(index=False))
    where = device if cuda else f"cpu ({workers} runs in parallel, 1 thread each)"
    md = quality_markdown(frame, preset=asdict(preset), device=where)
    quality_plot(frame, out / "quality.png")
    if docs is not None:
        md = publish(frame, docs, preset=preset, device=where)
    return md


def publish(frame: Any, docs: str | Path, *, preset: Preset, device: str = "cpu") -> str:
    """Write one regime's results into the benchmarks page: section and Pareto PNG.

    ``frame`` holds the per-case rows of one regime (``quality_cases.csv``); the section is
    ``quality-<regime>`` of ``docs`` and the figure ``img/quality_<regime>.png`` beside it, so
    the regimes (``--cases 16``, ``--cases 4``, ``--budget``) each keep their own.
    """
    from invseg.bench.quality_report import quality_markdown, quality_plot
    from invseg.bench.report import update_section

    docs = Path(docs)
    regime = str(frame["regime"].iloc[0])
    figure = docs.parent / "img" / f"quality_{regime}.png"
    figure.parent.mkdir(parents=True, exist_ok=True)
    quality_plot(frame, figure)
    md = quality_markdown(frame, preset=asdict(preset), device=device)
    md += f"\n![Dice vs memory and time, {regime}](img/{figure.name})\n"
    update_section(docs, f"quality-{regime}", md)
    return md
