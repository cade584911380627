"""MoDL reconstruction as a training task: simulated k-space, MoDL, image loss, PSNR/SSIM/NMSE.

``data.kind``: ``2d`` (image ``(H, W)``), ``3d`` (slab ``(D, H, W)``, Poisson-disc ky-kz mask,
3D FFT) or ``cine`` (2D+time ``(T, H, W)``, beating phantom, ky-t mask, 2D FFT per frame).
Every sample is normalised so that its zero-filled image has maximum magnitude 1; prediction
applies the same normalisation and undoes it. An epoch is one pass over the training samples in
an order drawn from ``(train.seed, epoch)``, ``train.batch_size`` samples per step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from invseg.recon.metrics import nmse, psnr, ssim
from invseg.recon.modl import MoDL
from invseg.recon.operators import SenseOperator
from invseg.recon.simulate import beating_phantom, mni152_slice, shepp_logan
from invseg.recon.transforms import SimulateKSpace
from invseg.runtime.device import Amp
from invseg.runtime.distributed import DistInfo
from invseg.tasks.config import ReconConfig, ReconData

__all__ = ["RESUME_MUTABLE", "ReconTask", "build_model", "collate", "simulate_dataset"]

#: Config keys a ``--resume`` may change (the others are refused): the training schedule, and
#: the model keys that trade compute for memory without touching the weights or the maths.
RESUME_MUTABLE = (
    "model.memory",
    "model.anchor_every",
    "model.drift_tol",
    "model.drift_every",
    "model.fixed_point_tol",
    "model.fixed_point_iters",
    "train.steps",
    "train.lr",
    "train.grad_clip",
    "train.val_every_steps",
    "train.val_every",  # its name in checkpoints written before the rename
    "train.checkpoint_every",
    "train.device",
    "train.progress",
    "output",
)


def build_model(cfg: ReconConfig) -> MoDL:
    """A :class:`MoDL` from the ``model`` section of a resolved config."""
    return MoDL(**cfg.model.to_dict())


def _image(d: ReconData, rng: np.random.Generator) -> Tensor:
    shape = tuple(d.shape)
    if d.kind == "cine":
        img = beating_phantom(
            shape[0],
            shape[1:],
            cycles=float(rng.uniform(0.7, 1.5)),
            amplitude=float(rng.uniform(0.15, 0.3)),
        )
        img = torch.roll(img, int(rng.integers(-shape[0], shape[0])), dims=0)
    elif d.kind == "3d":
        img = shepp_logan(shape, ndim=3)
    elif d.phantom == "mni152":
        img = mni152_slice(shape, index=float(rng.uniform(0.35, 0.65)))
    else:
        img = shepp_logan(shape)
    for dim in (-1, -2):  # random flips and small shifts: a family of phantoms
        if rng.random() < 0.5:
            img = img.flip(dim)
        img = torch.roll(img, int(rng.integers(-2, 3)), dims=dim)
    img = img * float(rng.uniform(0.7, 1.3))
    phase = float(rng.uniform(-math.pi, math.pi))
    return img.to(torch.complex64) * complex(math.cos(phase), math.sin(phase))


def simulate_dataset(d: ReconData, n: int, seed: int) -> list[dict[str, Tensor]]:
    """``n`` normalised samples ``{"target", "kspace", "mask", "coil_maps"}`` for a data section."""
    rng = np.random.default_rng(seed)
    sim = SimulateKSpace(
        d.num_coils,
        d.acceleration,
        mask_type=d.mask,
        calib=d.calib,
        noise_std=d.noise_std,
        seed=int(rng.integers(2**31 - 1)),
    )
    out = []
    fft_ndim = 3 if d.kind == "3d" else 2
    for _ in range(n):
        x = _image(d, rng)
        k, m, S = sim(x[None])
        op = SenseOperator(S[None], m[None], fft_ndim=fft_ndim)
        scale = op.A_adjoint(k[None]).abs().max().clamp_min(1e-12)
        out.append({"target": x[None] / scale, "kspace": k / scale, "mask": m, "coil_maps": S})
    return out


def collate(
    samples: Sequence[dict[str, Tensor]], kind: str, device: Any, cdtype: torch.dtype
) -> tuple[Tensor, Tensor, SenseOperator]:
    """``(target x, k-space y, operator)`` of a list of samples, batched on ``device``."""
    y = torch.stack([s["kspace"] for s in samples]).to(device, cdtype)
    S = torch.stack([s["coil_maps"] for s in samples]).to(device, cdtype)
    m = torch.stack([s["mask"] for s in samples]).to(device)
    x = torch.stack([s["target"] for s in samples]).to(device, cdtype)
    return x, y, SenseOperator(S, m, fft_ndim=3 if kind == "3d" else 2)


class ReconTask:
    """MoDL on simulated multi-coil k-space, for :class:`~invseg.runtime.loop.Loop`.

    Args:
        cfg: the resolved config.
        info: rank and device of this process.
    """

    score = "val_psnr"
    has_validation = True

    def __init__(self, cfg: ReconConfig, info: DistInfo) -> None:
        self.cfg, self.info = cfg, info
        d, t = cfg.data, cfg.train
        self.rdtype = torch.float64 if t.dtype == "float64" else torch.float32
        self.cdtype = torch.complex128 if t.dtype == "float64" else torch.complex64
        torch.manual_seed(t.seed)
        self.model: nn.Module = build_model(cfg).to(info.device, self.rdtype)
        self.optimizer: torch.optim.Optimizer = torch.optim.Adam(self.model.parameters(), lr=t.lr)
        self.scheduler = None
        self.train_data = simulate_dataset(d, d.train_samples, d.seed)
        self.val_data = simulate_dataset(d, d.val_samples, d.seed + 10_000)
        self.total_steps = t.steps

    def describe(self, amp: Amp) -> list[str]:
        """Model size and data."""
        n = sum(p.numel() for p in self.model.parameters())
        d = self.cfg.data
        return [
            f"MoDL {self.cfg.model.num_unrolls} unrolls ({self.cfg.model.memory}): {n} "
            f"parameters; {d.kind} {d.shape}, {len(self.train_data)} training / "
            f"{len(self.val_data)} validation samples; {self.total_steps} steps on "
            f"{self.info.device}"
        ]

    def batches(self, epoch: int) -> list[list[dict[str, Tensor]]]:
        """The training samples in an order drawn from ``(seed, epoch)``, in batches."""
        rng = np.random.default_rng([self.cfg.train.seed, epoch])
        order = rng.permutation(len(self.train_data))
        bs = self.cfg.train.batch_size
        groups = [order[i : i + bs] for i in range(0, len(order), bs)]
        shard = groups[self.info.rank :: self.info.world_size]
        return [[self.train_data[int(i)] for i in g] for g in shard]

    def loss(self, model: nn.Module, batch: list[dict[str, Tensor]], amp: Amp) -> Tensor:
        """MSE or L1 of the complex image error."""
        x, y, op = collate(batch, self.cfg.data.kind, self.info.device, self.cdtype)
        err = model(y, op) - x
        return err.abs().square().mean() if self.cfg.train.loss == "mse" else err.abs().mean()

    @torch.no_grad()
    def validate(self, amp: Amp) -> dict[str, float]:
        """Mean PSNR, SSIM and NMSE of the magnitude over the validation samples."""
        self.model.eval()
        rows = []
        try:
            for s in self.val_data:
                x, y, op = collate([s], self.cfg.data.kind, self.info.device, self.cdtype)
                pred = self.model(y, op)
                g, p = x.abs()[0, 0].cpu().numpy(), pred.abs()[0, 0].cpu().numpy()
                rows.append((psnr(g, p), ssim(g, p), nmse(g, p)))
        finally:
            self.model.train()
        a = np.asarray(rows)
        return {
            "val_psnr": float(a[:, 0].mean()),
            "val_ssim": float(a[:, 1].mean()),
            "val_nmse": float(a[:, 2].mean()),
        }

    def step_metrics(self) -> dict[str, float]:
        """The data-consistency weight ``mu`` of the first unroll."""
        return {"mu": float(self.model.chain.blocks[0].dc.mu.item())}

    def meta(self) -> None:
        """Recon checkpoints carry their config, no segmentation meta."""
        return None

    def finish(self, rows: list[dict[str, Any]], run_dir: Path) -> None:
        """Nothing to plot."""
