"""Quality part of ``invseg bench recon``: MoDL against zero-filled and CG-SENSE on simulated cine.

Zero-filled, CG-SENSE (its mu tuned on the training samples) and MoDL with 1, 4 and 10 unrolls,
PSNR/SSIM mean ± std over held-out samples and seeds. Every MoDL row is a run of ``invseg recon
train`` (:func:`invseg.commands.recon.train_recon`, the one training loop) on the config that
:func:`row_config` builds; its run folder ``<runs>/quality/modl<n>-seed<seed>/`` keeps
``config.yaml``, ``last.pt``, ``metrics.csv`` and ``train.log``, and ``invseg recon train
<that config.yaml> -o DIR`` repeats the row. The samples are :func:`invseg.tasks.recon.
simulate_dataset`'s, as training sees them: a row trains on ``data.seed = seed``, validates once
at its end on ``seed + 10000`` and is scored here on :data:`HELD_OUT_SEED`, which no run sees.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from invseg.recon.baselines import cg_sense, zero_filled
from invseg.recon.metrics import psnr, ssim
from invseg.recon.modl import MoDL
from invseg.tasks.config import ReconData
from invseg.tasks.recon import collate, simulate_dataset

__all__ = ["HELD_OUT_SEED", "markdown", "measure", "row_config", "train_row", "trained_modl"]

#: Seed of the held-out samples (training uses ``data.seed``, validation ``data.seed + 10000``).
HELD_OUT_SEED = 20_000


def cine_data(cfg: dict, seed: int) -> dict[str, Any]:
    """The ``data`` section of the cine problem (beating phantom, ky-t 6x) for ``seed``."""
    return {
        "kind": "cine", "phantom": "shepp_logan", "shape": list(cfg["cine_shape"]),
        "num_coils": cfg["cine_coils"], "acceleration": 6.0, "mask": "kt",
        "calib": cfg["calib"], "noise_std": 0.0, "train_samples": cfg["train"],
        "val_samples": cfg["val"], "seed": int(seed),
    }  # fmt: skip


def row_config(cfg: dict, unrolls: int, seed: int, *, device: str, run_dir: Path) -> dict:
    """The ``invseg recon train`` config of one MoDL row (a plain mapping, YAML-ready).

    ``store`` memory: the same gradients as every memory mode, and the fastest on small data.
    One validation, at the end (``train.val_every_steps`` = ``train.steps``).
    """
    return {
        "data": cine_data(cfg, seed),
        "model": {
            "num_unrolls": int(unrolls), "spatial_dims": 3, "channels": cfg["cine_channels"],
            "memory": "store", "mu_init": 0.1,
        },
        "train": {
            "steps": cfg["steps"], "batch_size": cfg["batch"], "lr": cfg["lr"], "loss": "mse",
            "seed": int(seed), "val_every_steps": cfg["steps"], "checkpoint_every": None,
            "device": device, "dtype": "float32", "progress": False,
        },
        "output": {"dir": str(run_dir)},
    }  # fmt: skip


def train_row(config: dict, run_dir: Path) -> Path:
    """``invseg recon train config -o run_dir`` (a fresh folder; log in ``train.log``)."""
    from invseg.commands.recon import train_recon

    if run_dir.exists():  # this bench's own earlier row: replaced
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    with open(run_dir / "train.log", "w") as log:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            train_recon(config, output=run_dir)
    return run_dir


def trained_modl(config: dict, run_dir: Path, device: torch.device) -> MoDL:
    """The MoDL of ``config`` with the final weights of its run (``last.pt``), eval mode."""
    from invseg.runtime.checkpoint import load_checkpoint
    from invseg.tasks.config import load_recon_config
    from invseg.tasks.recon import build_model

    model = build_model(load_recon_config(config))
    model.load_state_dict(load_checkpoint(run_dir / "last.pt")["model"])
    return model.to(device).eval()


def _scores(fn, samples: list[dict], device) -> list[tuple[float, float]]:
    rows = []
    for s in samples:
        x, y, op = collate([s], "cine", device, torch.complex64)
        with torch.no_grad():
            p = fn(y, op)
        g, q = x.abs()[0, 0].cpu().numpy(), p.abs()[0, 0].cpu().numpy()
        rows.append((psnr(g, q), ssim(g, q)))
    return rows


def _cg_sense(mu: float):
    """CG-SENSE with Tikhonov weight ``mu`` as a ``(y, op) -> x`` reconstruction."""
    return lambda y, op: cg_sense(y, op, mu=mu, max_iter=30)


def _tune_cg_sense(train, device, mus=(1e-3, 3e-3, 1e-2, 3e-2, 1e-1)) -> float:
    """The CG-SENSE regularisation with the best mean PSNR on the training samples."""

    def mean_psnr(mu: float) -> float:
        return float(np.mean([r[0] for r in _scores(_cg_sense(mu), train, device)]))

    return max(mus, key=mean_psnr)


def measure(cfg: dict, device: torch.device, runs: Path) -> dict[str, np.ndarray]:
    """PSNR/SSIM rows per method; MoDL rows pool the held-out samples over seeds.

    Args:
        cfg: a preset of :data:`invseg.bench.recon.PRESETS`.
        device: where to train and reconstruct.
        runs: the bench's run folder; MoDL rows train in ``runs/quality/modl<n>-seed<seed>``.
    """
    data = ReconData.build(cine_data(cfg, 0), "data")
    val = simulate_dataset(data, cfg["val"], HELD_OUT_SEED)
    mu = _tune_cg_sense(simulate_dataset(data, cfg["train"], 0), device)
    res = {
        "zero-filled": np.asarray(_scores(zero_filled, val, device)),
        f"CG-SENSE (mu {mu:g})": np.asarray(_scores(_cg_sense(mu), val, device)),
    }
    for n in (1, 4, 10):
        rows = []
        for seed in range(cfg["seeds"]):
            run_dir = Path(runs) / "quality" / f"modl{n}-seed{seed}"
            config = row_config(cfg, n, seed, device=str(device), run_dir=run_dir)
            rows += _scores(trained_modl(config, train_row(config, run_dir), device), val, device)
        res[f"MoDL {n} unroll{'s' if n > 1 else ''}"] = np.asarray(rows)
    return res


def _fmt_rows(quality: dict[str, np.ndarray]) -> list[str]:
    rows = []
    for k, a in quality.items():
        rows.append(
            f"| {k} | {a[:, 0].mean():.2f} ± {a[:, 0].std():.2f} | "
            f"{a[:, 1].mean():.4f} ± {a[:, 1].std():.4f} | {len(a)} |"
        )
    return rows


#: What changed when the bench's own loop gave way to ``invseg recon train``.
RECIPE_CHANGES = (
    "samples are `invseg recon train`'s (`simulate_dataset`: random flips, shifts of up to 2 "
    "pixels and a 0.7-1.3 intensity scale on top of the former random cycles, amplitude, time "
    "shift and phase; coil/mask seeds drawn from the data seed), held out on seed "
    f"{HELD_OUT_SEED} instead of 10000",
    "each epoch is one pass over the training samples in an order drawn from (seed, epoch) "
    "instead of an independent random batch per step",
    "the loop validates once at the end (on `seed + 10000`) and stages `last.pt` at each "
    "epoch end; the final weights (`last.pt`) are scored",
)


def markdown(cfg: dict, quality: dict[str, np.ndarray], full: dict, runs: Path) -> list[str]:
    """The quality table and the targets; ``full`` is the GPU preset (named in the text)."""
    q = {k: v[:, 0].mean() for k, v in quality.items()}
    cg = next(k for k in q if k.startswith("CG-SENSE"))
    T, H, W = cfg["cine_shape"]
    where = Path(runs).as_posix()
    return [
        "",
        f"### Quality on simulated cine ({T}x{H}x{W}, {cfg['cine_coils']} coils, ky-t 6x, "
        f"{cfg['calib']} calibration lines)",
        "",
        f"Each MoDL row is `invseg recon train {where}/quality/modl<n>-seed<seed>/config.yaml`: "
        f"{cfg['steps']} Adam steps (lr {cfg['lr']:g}, batch {cfg['batch']}, {cfg['train']} "
        f"training samples, `store` memory) per depth and seed, {cfg['seeds']} seeds, "
        f"{cfg['val']} held-out samples; MoDL rows pool samples over seeds. CG-SENSE's mu is the "
        "best of 1e-3..1e-1 by mean PSNR on the training samples of seed 0. Changes from the "
        f"bench's former own loop: {'; '.join(RECIPE_CHANGES)}.",
        "",
        "| method | PSNR (dB) | SSIM | n |",
        "|---|---|---|---|",
        *_fmt_rows(quality),
        "",
        f"10 vs 4 unrolls: {q['MoDL 10 unrolls'] - q['MoDL 4 unrolls']:+.2f} dB (target >= "
        f"+0.5); MoDL-10 vs CG-SENSE: {q['MoDL 10 unrolls'] - q[cg]:+.2f} dB (target "
        ">= +2). The full preset (`invseg bench recon --device cuda`) trains "
        f"{full['steps']} steps on {'x'.join(map(str, full['cine_shape']))}.",
    ]
