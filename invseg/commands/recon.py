"""``invseg recon train`` and ``invseg recon predict``: MoDL on simulated k-space, and inference.

Config (YAML, every hyper-parameter; unknown keys are errors with a did-you-mean hint): see
:class:`invseg.tasks.config.ReconConfig`; the task itself is :class:`invseg.tasks.recon.ReconTask`,
trained by :class:`invseg.runtime.loop.Loop` like segmentation.

.. code-block:: yaml

    data:   {kind: 2d, phantom: shepp_logan, shape: [32, 32], num_coils: 4, acceleration: 4.0,
             mask: poisson, calib: 8, noise_std: 0.0, train_samples: 16, val_samples: 4, seed: 0}
    model:  {num_unrolls: 10, channels: 64, layers: 5, memory: invert, ...}  # MoDL arguments
    train:  {steps: 200, batch_size: 2, lr: 1.0e-3, loss: mse, ...}
    output: {dir: runs/recon_2d}
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from invseg._choices import did_you_mean
from invseg.recon.operators import SenseOperator
from invseg.runtime.checkpoint import load_checkpoint, load_weights
from invseg.runtime.distributed import DistInfo, resolve_device
from invseg.runtime.files import atomic_path, atomic_save_numpy
from invseg.runtime.loop import Loop, LoopSettings
from invseg.tasks.config import load_recon_config
from invseg.tasks.recon import RESUME_MUTABLE, ReconTask, build_model, collate, simulate_dataset

__all__ = [
    "build_model",
    "collate",
    "load_recon_config",
    "predict_recon",
    "simulate_dataset",
    "train_recon",
]


def train_recon(
    config: str | Path | Mapping[str, Any],
    *,
    overrides: Sequence[str] = (),
    resume: bool = False,
    output: str | Path | None = None,
) -> Path:
    """Train MoDL (with MEL) on simulated multi-coil k-space described by a config.

    Writes ``<output>/last.pt`` and ``best.pt`` (atomic; loadable with
    ``torch.load(weights_only=True)``), ``metrics.csv`` (step, loss, mu, validation PSNR/SSIM/NMSE)
    and ``config.yaml``, like ``invseg train``.

    Args:
        config: YAML config, packaged name (``recon_2d``) or mapping.
        overrides: ``key=value`` overrides (``train.steps=2``).
        resume: continue from ``<output>/last.pt``; without it an existing run is refused.
        output: run folder (default: ``output.dir`` of the config).

    Returns:
        Path of the best checkpoint (``last.pt`` when no validation improved).

    Raises:
        ConfigError: bad config, an existing run without ``resume``, ``resume`` without a run.
    """
    cfg = load_recon_config(config, overrides)
    if output is not None:  # set directly: a path is no YAML value (``#``, ``:`` in names)
        cfg.output.dir = str(output)
    t = cfg.train
    info = DistInfo(device=resolve_device(t.device))
    task = ReconTask(cfg, info)
    settings = LoopSettings(
        run_dir=Path(cfg.output.dir).expanduser(),
        total_steps=task.total_steps,
        config=cfg.to_dict(),
        checkpoint_every=t.checkpoint_every,
        val_every_steps=t.val_every,
        grad_clip=t.grad_clip,
        progress=t.progress,
        resume=resume,
        lr=t.lr,
        resume_mutable=RESUME_MUTABLE,
        resume_hint=f"invseg recon train {config if not isinstance(config, Mapping) else 'CONFIG'}"
        " --resume",
    )
    run_dir = Loop(task, settings, info).run()
    best = run_dir / "best.pt"
    return best if best.exists() else run_dir / "last.pt"


# ----------------------------------------------------------------------------- predict
def _load_input(path: Path, kind: str) -> tuple[Tensor, Tensor, Tensor, int]:
    """(kspace (B, coils, *spatial), mask, coil_maps, fft_ndim) from .h5 or .npz."""
    from invseg.recon.io import read_fastmri_h5

    if not path.is_file():
        raise ValueError("file does not exist")
    if path.suffix in (".h5", ".hdf5"):
        if kind != "2d":
            raise ValueError("fastMRI HDF5 files hold 2D slices; this checkpoint is not 2D")
        data = read_fastmri_h5(path)
        return data["kspace"], data["mask"], data["coil_maps"], 2
    if path.suffix == ".npz":
        with np.load(path) as z:
            missing = {"kspace", "mask", "coil_maps"} - set(z.files)
            if missing:
                raise ValueError(f"missing arrays {sorted(missing)} (need kspace, mask, coil_maps)")
            k, m, S = (torch.from_numpy(np.asarray(z[n])) for n in ("kspace", "mask", "coil_maps"))
        if not k.is_complex():
            raise ValueError(f"kspace must be complex, got {k.dtype}")
        nsp = 2 if kind == "2d" else 3
        if k.dim() == nsp + 1:  # no batch dim
            k, S = k[None], S[None]
            m = m[None] if m.dim() == nsp + 1 else m
        while m.dim() < k.dim():
            m = m[None]
        return k.to(torch.complex64), m.float(), S.to(torch.complex64), 3 if kind == "3d" else 2
    raise ValueError(f"unsupported input '{path.suffix}'; give fastMRI .h5 or .npz files")


def predict_recon(
    checkpoint: Path, inputs: Sequence[Path], output: Path, *, fmt: str = "nifti"
) -> int:
    """Reconstruct undersampled k-space files with a trained MoDL checkpoint.

    Inputs are fastMRI-style ``.h5`` (``kspace`` ``(slices, coils, H, W)``, optional ``mask``;
    coil maps estimated from the calibration region) or ``.npz`` with ``kspace``
    ``([B,] coils, *spatial)`` complex, ``mask`` and ``coil_maps``. For each input
    ``<stem>_recon.npy`` (complex, ``(B, *spatial)``) and the magnitude as
    ``<stem>_recon.nii.gz`` (``fmt="nifti"``, identity affine, array ``(B, *spatial)`` squeezed)
    or ``<stem>_magnitude.npy`` (``fmt="npy"``) are written into ``output``.

    Args:
        checkpoint: ``best.pt``/``last.pt`` from :func:`train_recon`.
        inputs: files to reconstruct.
        output: output folder.
        fmt: ``"nifti"`` or ``"npy"``.

    Returns:
        Number of inputs that failed (each reported in one line on stderr).
    """
    fmts = ("nifti", "npy")
    if fmt not in fmts:
        raise ValueError(f"fmt must be one of {fmts}, got {fmt!r}." + did_you_mean(fmt, fmts))
    state = load_checkpoint(checkpoint)
    if "config" not in state:
        raise ValueError(f"{checkpoint}: not a recon checkpoint (no config entry)")
    cfg = load_recon_config(state["config"])
    model = build_model(cfg)
    load_weights(model, state["model"], source=checkpoint)
    model.eval()
    kind = cfg["data"]["kind"]
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    failed = 0
    for path in map(Path, inputs):
        try:
            k, m, S, fft_ndim = _load_input(path, kind)
            recons = []
            with torch.no_grad():
                for b in range(k.shape[0]):
                    op = SenseOperator(
                        S[b : b + 1], m[:1] if m.shape[0] == 1 else m[b : b + 1], fft_ndim=fft_ndim
                    )
                    y = k[b : b + 1]
                    scale = op.A_adjoint(y).abs().max().clamp_min(1e-12)
                    recons.append(model(y / scale, op)[0, 0] * scale)
            x = torch.stack(recons).numpy()  # (B, *spatial) complex
            stem = path.name.split(".")[0]
            _save_npy(output / f"{stem}_recon.npy", x)
            mag = np.abs(x).astype(np.float32).squeeze(0) if x.shape[0] == 1 else np.abs(x)
            if fmt == "npy":
                _save_npy(output / f"{stem}_magnitude.npy", mag.astype(np.float32))
            else:
                _save_nifti(output / f"{stem}_recon.nii.gz", mag.astype(np.float32))
        except Exception as err:  # one bad input must not stop the others
            failed += 1
            msg = str(err).splitlines()[0] if str(err) else type(err).__name__
            print(f"error: {path}: {msg}", file=sys.stderr)
    return failed


def _save_npy(path: Path, arr: np.ndarray) -> None:
    atomic_save_numpy(path, arr)


def _save_nifti(path: Path, arr: np.ndarray) -> None:
    import nibabel as nib

    with atomic_path(path, keep_suffix=True) as tmp:
        nib.save(nib.Nifti1Image(arr, np.eye(4)), tmp)
