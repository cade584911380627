"""``invseg bench quality``: held-out Dice x memory x time for every zoo model, same recipe.

Every row trains on the same split of generated ``hard`` BraTS-like cases with the same loss
(``DiceLoss(sigmoid=True)`` + per-channel ``BCEWithLogitsLoss``: the regions overlap, so no
softmax cross-entropy), AdamW, cosine schedule, step budget, crop and augmentation
(:func:`invseg.data.train_transforms`), for several seeds. Held-out cases are scored per region
(TC, WT, ET) by :func:`invseg.tasks.seg_metrics.score_case`, as validation and ``invseg
evaluate`` score them: Dice and HD95 in mm (at the 1 mm of :func:`invseg.data.eval_transforms`),
with the BraTS rules for empty masks (both empty: Dice 1 and HD95 0; one empty: Dice 0 and
HD95 373.13).

Each run is a fresh spawned process (one intra-op thread on CPU, ``workers`` at a time), so
peak memory is the run's own: CUDA ``max_memory_allocated``, else the peak RSS increase
sampled during training. Activation MiB are the exact saved-for-backward bytes of one training
forward at the crop (:func:`invseg.runtime.planner.measure_step`).

Presets (:data:`PRESETS`), one command each per regime:

* ``quick`` (2 CPU cores, about 15 minutes for the 11 models x 3 seeds): 48x48x40 volumes,
  16 training and 4 test cases, crop 32^3, batch 2, base 8 channels, 200 steps, lr 5e-3:
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

import os
import statistics
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from invseg.bench.models import DEFAULT_MODELS, build


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


#: ``quick``: 2 CPU cores, ~15 min for 11 models x 3 seeds; ``full``: one GPU at native size.
PRESETS = {
    "quick": Preset((48, 48, 40), 32, 2, 200, 5e-3, 6, 8, 0.25, data="medium"),
    "full": Preset((240, 240, 155), 128, 2, 4000, 1e-3, 20, 16, 0.5),
}


@dataclass(frozen=True)
class Job:
    """One training run: a model, a seed and a regime."""

    model: str
    seed: int
    regime: str
    cases: int
    crop: int
    preset: Preset
    train: tuple[dict, ...]
    test: tuple[dict, ...]
    device: str
    threads: int


class PeakRSS:
    """Sample this process's resident set size in a thread; ``peak`` is the maximum seen."""

    def __init__(self, every: float = 0.002) -> None:
        self.every, self.peak, self._stop = every, 0, threading.Event()
        self.start = self.peak = self.rss()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def rss() -> int:
        """Current RSS in bytes (Linux ``/proc``; 0 elsewhere)."""
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            return 0

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.peak = max(self.peak, self.rss())

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _loss_fn():
    import torch
    from monai.losses import DiceLoss

    dice, bce = DiceLoss(sigmoid=True), torch.nn.BCEWithLogitsLoss()
    return lambda logits, y: dice(logits, y) + bce(logits, y)


def _loader(job: Job):
    import torch
    from monai.data import CacheDataset, DataLoader, list_data_collate

    from invseg.data import train_transforms

    t = train_transforms("brats", crop=(job.crop,) * 3, num_samples=job.preset.batch)
    ds = CacheDataset(list(job.train), t, cache_rate=1.0, progress=False, num_workers=0)
    gen = torch.Generator().manual_seed(job.seed)
    return DataLoader(ds, batch_size=1, shuffle=True, collate_fn=list_data_collate, generator=gen)


def _train(net, job: Job, device, loader) -> tuple[list[float], int]:
    """Train ``net`` for ``job.preset.steps`` steps; returns step times and activation bytes."""
    import torch

    from invseg.runtime.planner import measure_step

    loss_fn = _loss_fn()
    opt = torch.optim.AdamW(net.parameters(), lr=job.preset.lr, weight_decay=1e-5)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=job.preset.steps)
    act = measure_step(net, 4, job.crop, batch=job.preset.batch, device=device)[0]
    times, step = [], 0
    while step < job.preset.steps:
        for batch in loader:
            if step >= job.preset.steps:
                break
            start = time.perf_counter()
            x, y = batch["image"].to(device), batch["label"].to(device)
            opt.zero_grad(set_to_none=True)
            logits, vae = net(x)
            loss = loss_fn(logits, y) + (0.0 if vae is None else vae)
            loss.backward()
            opt.step()
            sched.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
            step += 1
    return times, act


def _evaluate(net, job: Job, device) -> list[dict[str, Any]]:
    import torch
    from monai.inferers import sliding_window_inference

    from invseg.data import eval_transforms, get_convention
    from invseg.tasks.seg_metrics import logit_masks, region_names, score_case, target_masks

    conv = get_convention("brats")
    names, mm = region_names(conv), (1.0, 1.0, 1.0)  # volumes resampled to 1 mm voxels
    t, rows = eval_transforms(conv, spacing=mm), []
    net.eval()
    with torch.no_grad():
        for case in job.test:
            d = t(dict(case))
            x = torch.as_tensor(d["image"])[None].to(device)
            logits = sliding_window_inference(
                x, (job.crop,) * 3, 4, net.logits, overlap=job.preset.overlap
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


def run_job(job: Job) -> list[dict[str, Any]]:
    """Train and evaluate one row; returns one dict per held-out case (run metrics repeated)."""
    import torch
    from monai.utils import set_determinism

    torch.set_num_threads(job.threads)
    device = torch.device(job.device)
    set_determinism(job.seed)
    crop = (job.crop,) * 3
    net = build(job.model, in_channels=4, out_channels=3, crop=crop, base=job.preset.base)
    net.to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    loader = _loader(job)  # cached volumes: not part of the training peak
    wall = time.perf_counter()
    with PeakRSS() as rss:
        times, act = _train(net, job, device, loader)
    wall = time.perf_counter() - wall
    peak = (
        torch.cuda.max_memory_allocated(device) if device.type == "cuda" else rss.peak - rss.start
    )
    run = {
        "model": job.model, "memory": net.memory, "seed": job.seed, "regime": job.regime,
        "cases": job.cases, "crop": job.crop, "steps": len(times),
        "params": sum(p.numel() for p in net.parameters()), "activation_mib": act / 2**20,
        "peak_mib": peak / 2**20, "step_s": statistics.median(times[1:] or times),
        "wall_s": wall,
    }  # fmt: skip
    return [run | row for row in _evaluate(net, job, device)]


def make_data(root: Path, preset: Preset, train_cases: int) -> tuple[list[dict], list[dict]]:
    """Generate (or reuse) the hard cases; the test cases are the same for every regime."""
    from invseg.data import case_dicts, synthesize

    pool = max(preset.pool, train_cases)
    info = synthesize(
        "brats", root, cases=pool + preset.test_cases, shape=preset.shape, seed=0,
        preset=preset.data,
    )  # fmt: skip
    dicts = case_dicts(info.cases)
    return dicts[:train_cases], dicts[pool:]


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
    ``output/quality_cases.csv`` (per held-out case), ``output/quality.png`` and, when ``docs``
    is given, the
    ``quality`` section of that markdown page. Returns the markdown. ``steps`` other than the
    preset's trains longer (or shorter) with the same schedule shape; the regime is then named
    e.g. ``cases16-steps600`` so its section does not replace the preset's.
    """
    import pandas as pd

    from invseg.bench.quality_report import per_run, quality_markdown, quality_plot
    from invseg.runtime.files import atomic_write_text
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
    train, test = make_data(out / "data", preset, int(cases))
    crops = {n: preset.crop for n in names}
    regime = f"cases{int(cases)}{longer}"
    if budget is not None:
        crops = plan_crops(names, parse_bytes(budget), preset, device)
        regime = f"budget{budget}{longer}"
    cuda = device.startswith("cuda")
    workers = workers or (1 if cuda else max(1, min(2, os.cpu_count() or 1)))
    jobs = [
        Job(n, s, regime, int(cases), crops[n], preset, tuple(train), tuple(test), device, 1)
        for s in range(int(seeds))
        for n in names
        if n in crops
    ]
    rows: list[dict] = []
    ctx = get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx, max_tasks_per_child=1) as pool:
        for result in pool.map(run_job, jobs):
            rows += result
            print(f"{result[0]['model']:>22} seed {result[0]['seed']}: "
                  f"dice {np.mean([r['dice_mean'] for r in result]):.3f}", flush=True)  # fmt: skip
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
