"""nnU-Net v2's own steps for ``invseg bench nnunet``, each run in a fresh child process.

nnU-Net reads ``nnUNet_raw``, ``nnUNet_preprocessed`` and ``nnUNet_results`` once, when
``nnunetv2.paths`` is first imported, and sets torch's thread count while planning, so the
bench (:mod:`invseg.bench.nnunet`) runs each step as::

    python -m invseg.bench.nnunet_runs plan '{"dataset": 990, "features": [8, 16, 32]}'
    python -m invseg.bench.nnunet_runs run '{"dataset": 990, "plans": ..., "seed": 0, ...}'

with those variables set to the bench's folders (:func:`child_command`). Each is nnU-Net's API
as its command-line entry points call it, one process at a time (``nnUNet_n_proc_DA=0``:
augmentation in the training process), with the sizes of the recipe set on nnU-Net's objects,
never by subclassing:

* ``plan``: ``nnUNetv2_plan_and_preprocess -d ID -c 3d_fullres -np 1
  --verify_dataset_integrity``, the fingerprint's intensity statistics from 10^5 foreground
  voxels instead of 10^8, then ``features_per_stage`` of ``nnUNetPlans.json`` set to the
  recipe's (the one hand-made change, for a CPU), before any variant's plans are derived.
* ``run``: ``nnUNetv2_train ID 3d_fullres all -p PLANS -tr nnUNetTrainer`` with
  ``num_epochs``, ``num_iterations_per_epoch`` and ``num_val_iterations_per_epoch`` set on the
  trainer object, torch, NumPy and Python seeded first; then ``nnUNetv2_predict -f all
  --disable_tta`` on the held-out images. The trainer's ``train_step`` is timed (a wrapper on
  the object); the peak memory is counted from its first call (data loaders and network built):
  CUDA ``max_memory_allocated``, else the peak RSS increase. The activation bytes are those
  saved for backward by one training forward of the trained network at the plans' batch and
  patch (deep supervision on; fp16 autocast on CUDA, as nnU-Net trains). The measurements go
  to the ``result`` JSON file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["child_command", "nnunet_env", "plan", "run", "run_child", "run_row", "timed_steps"]


def child_command(step: str, spec: dict[str, Any]) -> list[str]:
    """The argv of one child step (``spec``: the step's JSON arguments).

    Example:
        >>> child_command("plan", {"dataset": 990})[1:]
        ['-m', 'invseg.bench.nnunet_runs', 'plan', '{"dataset": 990}']
    """
    if step not in ("plan", "run"):
        raise ValueError(f"unknown nnU-Net step {step!r}: plan or run")
    return [sys.executable, "-m", "invseg.bench.nnunet_runs", step, json.dumps(spec)]


def nnunet_env(out: Path, results: Path) -> dict[str, str]:
    """The children's environment: nnU-Net's three folders, augmentation in the training
    process; ``nnUNet_compile`` as the user has it (nnU-Net compiles on CUDA only)."""
    env = dict(os.environ, nnUNet_n_proc_DA="0")
    env["nnUNet_raw"] = str(out / "nnUNet_raw")
    env["nnUNet_preprocessed"] = str(out / "nnUNet_preprocessed")
    env["nnUNet_results"] = str(results)
    return env


def run_child(step: str, spec: dict[str, Any], env: dict[str, str], log: Path) -> None:
    """Run one nnU-Net step in a child process; its output goes to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        done = subprocess.run(
            child_command(step, spec), env=env, stdout=f, stderr=subprocess.STDOUT, check=False
        )
    if done.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-15:])
        raise RuntimeError(f"nnU-Net step {step} failed (log {log}):\n{tail}")


def plan(spec: dict[str, Any]) -> None:
    """nnU-Net's fingerprint, plans and preprocessing of ``spec["dataset"]`` (3d_fullres)."""
    from batchgenerators.utilities.file_and_folder_operations import join
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import (
        DatasetFingerprintExtractor,
    )
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        plan_experiment_dataset,
        preprocess_dataset,
    )
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw
    from nnunetv2.utilities.dataset_name_id_conversion import convert_id_to_dataset_name

    dataset_id = int(spec["dataset"])
    name = convert_id_to_dataset_name(dataset_id)
    verify_dataset_integrity(join(nnUNet_raw, name), 1)
    extractor = DatasetFingerprintExtractor(dataset_id, 1, verbose=False)
    extractor.num_foreground_voxels_for_intensitystats = 1e5  # 10^8 takes 30 s on a CPU
    extractor.run(overwrite_existing=True)
    os.environ["nnUNet_n_proc_DA"] = "1"  # the planner sets torch's threads to it (0 fails)
    plan_experiment_dataset(dataset_id)
    os.environ["nnUNet_n_proc_DA"] = "0"
    path = Path(nnUNet_preprocessed) / name / "nnUNetPlans.json"
    plans = json.loads(path.read_text())
    arch = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    if spec.get("features"):
        features = list(spec["features"])
        n = int(arch["n_stages"])
        arch["features_per_stage"] = (features + features[-1:] * n)[:n]
    path.write_text(json.dumps(plans, indent=4))
    preprocess_dataset(dataset_id, "nnUNetPlans", ["3d_fullres"], [1], show_progress_bar=False)


def timed_steps(
    step: Callable[[Any], Any], on_first: Callable[[], None]
) -> tuple[Callable[[Any], Any], list[float]]:
    """``step`` wrapped to record its wall seconds (synchronised on CUDA by the loss's ``.cpu``);
    ``on_first`` runs before the first call.

    Example:
        >>> wrapped, seconds = timed_steps(lambda b: b + 1, lambda: None)
        >>> wrapped(1), len(seconds)
        (2, 1)
    """
    seconds: list[float] = []

    def wrapped(batch: Any) -> Any:
        if not seconds:
            on_first()
        t = time.perf_counter()
        out = step(batch)
        seconds.append(time.perf_counter() - t)
        return out

    return wrapped, seconds


def _seed(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - nnU-Net's augmentation draws from the global state
    torch.manual_seed(seed)


def _train(spec: dict[str, Any], device: Any) -> tuple[Any, dict[str, Any]]:
    """Train through ``nnUNetTrainer``; the trainer and what was measured."""
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args

    from invseg.bench.harness import PeakRSS

    _seed(int(spec["seed"]))
    trainer = get_trainer_from_args(
        str(spec["dataset"]), "3d_fullres", "all", "nnUNetTrainer", spec["plans"], device=device
    )  # nnUNetTrainer itself, as nnUNetv2_train builds it
    trainer.num_epochs = int(spec["epochs"])
    trainer.num_iterations_per_epoch = int(spec["iterations"])
    trainer.num_val_iterations_per_epoch = 1
    rss = PeakRSS()

    def start() -> None:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        rss.mark()

    trainer.train_step, seconds = timed_steps(trainer.train_step, start)
    wall = time.perf_counter()
    with rss:
        trainer.run_training()
    wall = time.perf_counter() - wall
    cuda = device.type == "cuda"
    peak = torch.cuda.max_memory_allocated(device) if cuda else rss.peak - rss.start
    return trainer, {"step_seconds": seconds, "peak_bytes": int(peak), "wall_s": wall}


def _activation(trainer: Any, device: Any) -> int:
    """Bytes saved for backward by one training forward at the plans' batch and patch."""
    import contextlib

    import torch

    from invseg.engine import activation_bytes

    net = getattr(trainer.network, "_orig_mod", trainer.network)  # torch.compile's wrapper
    net.train()
    trainer.set_deep_supervision_enabled(True)
    channels = trainer.num_input_channels
    patch = trainer.configuration_manager.patch_size
    x = torch.zeros(trainer.batch_size, channels, *patch, device=device)
    cuda = device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.float16) if cuda else contextlib.nullcontext()
    with autocast:
        return activation_bytes(net, x)


def _predict(spec: dict[str, Any], device: Any) -> None:
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    predictor = nnUNetPredictor(
        use_mirroring=False, perform_everything_on_device=device.type == "cuda", device=device,
        allow_tqdm=False,
    )  # fmt: skip
    folder = get_output_folder(int(spec["dataset"]), "nnUNetTrainer", spec["plans"], "3d_fullres")
    predictor.initialize_from_trained_model_folder(folder, use_folds=("all",))
    os.makedirs(spec["predictions"], exist_ok=True)  # the sequential path does not create it
    predictor.predict_from_files_sequential(
        spec["images"], spec["predictions"], save_probabilities=False
    )


def run(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one variant and seed, measure, predict the held-out images; write ``result``."""
    import torch

    device = torch.device(spec.get("device", "cpu"))
    trainer, measured = _train(spec, device)
    net = getattr(trainer.network, "_orig_mod", trainer.network)
    result = {
        "network": type(net).__name__,
        "patch": list(trainer.configuration_manager.patch_size),
        "batch": int(trainer.batch_size),
        "params": sum(p.numel() for p in net.parameters()),
        "activation_bytes": _activation(trainer, device),
        "output_folder": str(trainer.output_folder_base),
        **measured,
    }
    del trainer, net
    _predict(spec, device)
    Path(spec["result"]).write_text(json.dumps(result, indent=2) + "\n")
    return result


def run_row(variant: str, seed: int, measured: dict[str, Any]) -> dict[str, Any]:
    """The per-run columns from a child's result JSON (step s: median, first step left out).

    Example:
        >>> r = run_row("nnunet", 0, {"network": "PlainConvUNet", "patch": [48, 48, 40],
        ...     "batch": 2, "params": 10, "activation_bytes": 2**20, "peak_bytes": 2**21,
        ...     "step_seconds": [9.0, 1.0, 3.0], "wall_s": 5.0, "output_folder": "r"})
        >>> r["patch"], r["activation_mib"], r["step_s"], r["plans"]
        ('48x48x40', 1.0, 2.0, 'r/plans.json')
    """
    import statistics

    steps = [float(s) for s in measured["step_seconds"]]
    return {
        "variant": variant, "network": measured["network"], "seed": int(seed),
        "patch": "x".join(str(p) for p in measured["patch"]), "batch": int(measured["batch"]),
        "params": int(measured["params"]), "activation_mib": measured["activation_bytes"] / 2**20,
        "peak_mib": measured["peak_bytes"] / 2**20,
        "step_s": statistics.median(steps[1:] or steps), "steps": len(steps),
        "wall_s": float(measured["wall_s"]), "plans": f"{measured['output_folder']}/plans.json",
    }  # fmt: skip


def main(argv: list[str]) -> None:
    """``plan JSON`` or ``run JSON`` (see the module docstring)."""
    step, spec = argv[0], json.loads(argv[1])
    if step == "plan":
        plan(spec)
    elif step == "run":
        run(spec)
    else:
        raise SystemExit(f"unknown step {step!r}: plan or run")


if __name__ == "__main__":  # nnU-Net's worker pools spawn: the module must import quietly
    main(sys.argv[1:])
