"""``invseg bench nnunet``: invseg's nets inside nnU-Net v2's own recipe, against its own net.

One synthetic BraTS dataset (the ``hard`` preset, :func:`invseg.data.synthesize` in nnU-Net's
raw layout, region labels) is planned and preprocessed once by nnU-Net; then every variant
(:data:`VARIANTS`) trains with nnU-Net's unmodified ``nnUNetTrainer`` (fold ``all``, poly-SGD,
its augmentation, deep supervision, its Dice + BCE region loss) on a shortened schedule, for
several seeds, and ``nnUNetPredictor`` predicts the held-out cases, which invseg's one scorer
(:func:`invseg.tasks.seg_metrics.score_case`) scores: Dice per region (WT, TC, ET) and HD95 in
mm, with the BraTS rules for empty masks. The variants differ only in the plans' network:

* ``nnunet``: nnU-Net's own ``nnUNetPlans`` (``PlainConvUNet``), unchanged;
* ``partially``, ``fully``: the same plans with the architecture swapped by
  :func:`variant_plans` as ``invseg nnunet plans`` swaps it (nnU-Net's ``arch_kwargs`` kept,
  ``memory="invert"``), the patch kept;
* ``partially_budget``, ``fully_budget`` (opt-in, ``--models``): the larger patch that fits
  the peak of nnU-Net's own net at its patch (equal memory).

The nnU-Net steps run in child processes (:mod:`invseg.bench.nnunet_runs`). The output folder
holds nnU-Net's folders (``nnUNet_raw``, ``nnUNet_preprocessed`` with every variant's plans
file, ``results/seed<S>/``: one results tree per seed, each run's ``plans.json``,
``dataset.json``, training log and checkpoint as nnU-Net writes them), the held-out cases
(``heldout/imagesTs``, ``heldout/labelsTs``), the predictions, the logs of the children
(``logs/``), ``nnunet_cases.csv`` (per case) and ``nnunet.csv`` (per run).

Example:
    ``invseg bench nnunet --quick -o bench_nnunet --seeds 2 --docs docs/benchmarks.md``
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_VARIANTS",
    "PRESETS",
    "VARIANTS",
    "Recipe",
    "from_cli",
    "run",
    "score_folder",
    "variant_plans",
]

DATASET_ID = 990
DATASET_NAME = "Dataset990_BraTSHardBench"
#: Each variant's plans name and network (``None``: nnU-Net's own plans, unchanged).
VARIANTS: dict[str, tuple[str, str | None]] = {
    "nnunet": ("nnUNetPlans", None),
    "partially": ("nnUNetPlansInvsegBench_partially", "partially"),
    "fully": ("nnUNetPlansInvsegBench_fully", "fully"),
    "partially_budget": ("nnUNetPlansInvsegBench_partially_budget", "partially"),
    "fully_budget": ("nnUNetPlansInvsegBench_fully_budget", "fully"),
}
#: What runs without ``--models``; the ``*_budget`` variants (opt-in) take the larger patch
#: that fits the peak of nnU-Net's own net at its patch (equal memory), as ``invseg nnunet
#: plans --budget`` picks it; at the ``quick`` size nnU-Net's patch is already the volume.
DEFAULT_VARIANTS = ("nnunet", "partially", "fully")


@dataclass(frozen=True)
class Recipe:
    """The data and the shortened ``nnUNetTrainer`` schedule shared by every variant."""

    shape: tuple[int, int, int]  # synthetic volume size (1 mm voxels)
    cases: int  # labelled training cases (imagesTr)
    test_cases: int  # held-out labelled cases (predicted, then scored)
    epochs: int  # nnUNetTrainer.num_epochs (nnU-Net's default 1000)
    iterations: int  # num_iterations_per_epoch (default 250)
    features: tuple[int, ...] | None  # features_per_stage for every plan (None: nnU-Net's)
    data: str = "hard"  # synthetic preset


#: ``quick``: 2 CPU cores; ``full``: one GPU, nnU-Net's own features, a longer schedule.
PRESETS = {
    "quick": Recipe((48, 48, 48), 16, 4, 10, 20, (8, 16, 32, 64, 64)),
    "full": Recipe((240, 240, 155), 40, 10, 20, 250, None),
}


def variant_plans(plans: dict, variant: str, *, peak_fn: Any = None) -> dict:
    """The plans a variant trains with: nnU-Net's own, or its network swapped.

    As ``invseg nnunet plans`` (:func:`invseg.nnunet.plans.invseg_plans`): the ``3d_fullres``
    architecture and ``plans_name`` change; the patch is kept, or for a ``*_budget`` variant
    enlarged to the peak that ``peak_fn`` (``architecture -> peak(patch, batch)``, e.g.
    :func:`~invseg.nnunet.plans.measure_peak`) gives nnU-Net's own network at its patch.

    Raises:
        ValueError: an unknown variant (naming the known ones), a budget one without
            ``peak_fn``.
    """
    from invseg._choices import check_option
    from invseg.nnunet.plans import invseg_plans, read_configuration

    plans_name, model = VARIANTS[check_option("variant", variant, VARIANTS)]
    if model is None:
        return plans
    path, budget, fn = Path("nnUNetPlans.json"), 0, lambda _: lambda patch, batch: 1
    if variant.endswith("_budget"):
        if peak_fn is None:
            raise ValueError(f"variant {variant} needs peak_fn to measure the equal memory")
        source = read_configuration(plans, "3d_fullres", path)
        budget = peak_fn(source["architecture"])(source["patch_size"], source["batch_size"])
        fn = peak_fn
    new, _, _ = invseg_plans(
        plans, "3d_fullres", model=model, memory="invert", budget_bytes=budget,
        plans_name=plans_name, path=path, peak_fn=fn,
    )  # fmt: skip
    return new


def score_folder(predictions: Path, labels: Path) -> list[dict[str, Any]]:
    """Score nnU-Net's predicted label maps against the held-out labels (same file names).

    Both hold nnU-Net's BraTS labels (1 edema, 2 necrosis, 3 enhancing: the ``msd``
    convention), turned into the TC, WT, ET masks; HD95 in mm at the files' voxel size.
    """
    import nibabel as nib
    import numpy as np

    from invseg.data import get_convention
    from invseg.tasks.seg_metrics import region_names, score_case

    conv = get_convention("msd")
    names = region_names(conv)
    rows = []
    for ref_path in sorted(labels.glob("*.nii.gz")):
        ref_img = nib.load(ref_path)
        pred = np.asarray(nib.load(predictions / ref_path.name).dataobj).astype(np.uint8)
        ref = np.asarray(ref_img.dataobj).astype(np.uint8)
        spacing = [float(z) for z in ref_img.header.get_zooms()[:3]]
        score = score_case(conv.to_target(pred), conv.to_target(ref), names, spacing=spacing)
        dice = [score[f"dice_{n}"] for n in names]
        hd = [score[f"hd95_{n}"] for n in names]
        row = {"case": ref_path.name.removesuffix(".nii.gz"), "dice_mean": float(np.mean(dice))}
        row |= {f"dice_{n.lower()}": v for n, v in zip(names, dice)}
        row |= {"hd95": float(np.mean(hd))}
        rows.append(row)
    return rows


def make_data(out: Path, recipe: Recipe) -> tuple[Path, Path]:
    """Write the raw dataset and the held-out cases; ``(held-out images, held-out labels)``."""
    from invseg.data import synthesize

    raw = out / "nnUNet_raw" / DATASET_NAME
    held = out / "heldout"
    for folder in (raw, held, raw.with_name(f"{raw.name}_test")):
        shutil.rmtree(folder, ignore_errors=True)
    synthesize(
        "brats", raw, cases=recipe.cases, shape=recipe.shape, seed=0, layout="nnunet",
        preset=recipe.data, test_cases=recipe.test_cases,
    )  # fmt: skip
    # out of nnUNet_raw: two folders named Dataset990_* would make nnU-Net refuse the ID
    test = raw.with_name(f"{raw.name}_test")
    (held / "imagesTs").parent.mkdir(parents=True, exist_ok=True)
    shutil.move(test / "imagesTr", held / "imagesTs")
    shutil.move(test / "labelsTr", held / "labelsTs")
    shutil.rmtree(test)
    return held / "imagesTs", held / "labelsTs"


def prepare(out: Path, recipe: Recipe, variants: list[str], device: str) -> tuple[Path, Path]:
    """Data, nnU-Net's planning and preprocessing, and every variant's plans file."""
    from invseg.bench.nnunet_runs import nnunet_env, run_child
    from invseg.nnunet.plans import measure_peak, network_io

    images, labels = make_data(out, recipe)
    env = nnunet_env(out, out / "results")
    features = list(recipe.features) if recipe.features else None
    run_child("plan", {"dataset": DATASET_ID, "features": features}, env, out / "logs" / "plan.log")
    folder = out / "nnUNet_preprocessed" / DATASET_NAME
    plans = json.loads((folder / "nnUNetPlans.json").read_text())
    io = network_io(folder)
    for variant in variants:
        new = variant_plans(plans, variant, peak_fn=lambda a: measure_peak(a, *io, device=device))
        (folder / f"{VARIANTS[variant][0]}.json").write_text(json.dumps(new, indent=4) + "\n")
    return images, labels


def train_and_score(
    out: Path, variant: str, seed: int, recipe: Recipe, device: str, data: tuple[Path, Path]
) -> list[dict[str, Any]]:
    """One variant and seed: train, predict and score; one row per held-out case."""
    from invseg.bench.nnunet_runs import nnunet_env, run_child, run_row

    plans_name = VARIANTS[variant][0]
    results = out / "results" / f"seed{seed}"
    predictions = out / "predictions" / f"{variant}-seed{seed}"
    shutil.rmtree(predictions, ignore_errors=True)
    spec = {
        "dataset": DATASET_ID, "plans": plans_name, "seed": seed, "epochs": recipe.epochs,
        "iterations": recipe.iterations, "device": device, "images": str(data[0]),
        "predictions": str(predictions), "result": str(predictions) + ".json",
    }  # fmt: skip
    run_child("run", spec, nnunet_env(out, results), out / "logs" / f"{variant}-seed{seed}.log")
    run = run_row(variant, seed, json.loads(Path(spec["result"]).read_text()))
    return [run | row for row in score_folder(predictions, data[1])]


def run(
    *,
    quick: bool = True,
    output: str | Path = "bench_nnunet",
    seeds: int = 2,
    device: str = "cpu",
    docs: str | Path | None = None,
    variants: list[str] | None = None,
    recipe: Recipe | None = None,
) -> str:
    """Plan once, train every variant for ``seeds`` seeds, score; return the markdown section.

    Writes ``nnunet_cases.csv`` and ``nnunet.csv`` into ``output`` and, when ``docs`` is given,
    the section of that page that :func:`section_name` names.

    Raises:
        ValueError: an unknown variant or ``seeds < 1``.
        RuntimeError: an nnU-Net step failed (naming its log).
    """
    import pandas as pd

    from invseg._choices import check_option
    from invseg.bench.nnunet_report import nnunet_markdown, per_run, section_name
    from invseg.bench.report import update_section
    from invseg.files import atomic_write_text

    if int(seeds) < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    recipe = recipe or PRESETS["quick" if quick else "full"]
    names = list(variants or DEFAULT_VARIANTS)
    for v in names:
        check_option("variant", v, VARIANTS)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "recipe.json", json.dumps(asdict(recipe), indent=2) + "\n")
    data = prepare(out, recipe, names, device)
    rows: list[dict[str, Any]] = []
    for seed in range(int(seeds)):
        for v in names:
            result = train_and_score(out, v, seed, recipe, device, data)
            rows += result
            dice = sum(r["dice_mean"] for r in result) / len(result)
            print(f"{v:>16} seed {seed}: held-out Dice {dice:.3f}, {result[0]['wall_s']:.0f} s",
                  flush=True)  # fmt: skip
    frame = pd.DataFrame(rows)
    atomic_write_text(out / "nnunet_cases.csv", frame.to_csv(index=False))
    atomic_write_text(out / "nnunet.csv", per_run(frame).to_csv(index=False))
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    where = device if device.startswith("cuda") else f"cpu (OMP_NUM_THREADS={threads})"
    md = nnunet_markdown(frame, recipe=recipe, device=where, output=out)
    if docs is not None:
        update_section(Path(docs), section_name(recipe), md)
    return md


def from_cli(a: Any) -> int:
    """``invseg bench nnunet`` from the bench parser's namespace (``--steps``: iterations)."""
    recipe = PRESETS["quick" if a.quick else "full"]
    if getattr(a, "steps", None):
        recipe = replace(recipe, iterations=int(a.steps))
    out = a.output or Path("bench_nnunet")
    print(run(output=out, seeds=a.seeds, device=a.device, docs=a.docs, recipe=recipe,
              variants=getattr(a, "models", None) or None))  # fmt: skip
    print(f"results written to {out}")
    return 0
