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
from invseg.files import (
    atomic_path,
    atomic_save_numpy,
    output_notes,
    remove_stale_temps,
)
from invseg.recon.operators import SenseOperator
from invseg.runtime.checkpoint import load_checkpoint
from invseg.runtime.distributed import DistInfo, resolve_device
from invseg.runtime.loop import Loop
from invseg.runtime.restore import model_for_weights
from invseg.runtime.settings import LoopSettings
from invseg.tasks.config import load_recon_config, load_stored_recon_config
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
    settings = LoopSettings.from_config(
        cfg,
        total_steps=task.total_steps,
        command="invseg recon train",
        source=config,
        overrides=overrides,
        resume=resume,
        resume_mutable=RESUME_MUTABLE,
        per_step=f"{t.batch_size} samples (train.batch_size)",
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
    or ``<stem>_magnitude.npy`` (``fmt="npy"``) are written into ``output``. The last line
    printed says how many inputs were written, how many earlier results were replaced and how
    many temporary files of a killed earlier run were removed from ``output`` (at the start;
    only invseg's own ``.NAME.XXXXXXXX.tmp*`` names). Two inputs with the same stem (``a.h5``
    and ``a.npz``) would write the same files: the second one fails instead.

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
    if not isinstance(state.get("config"), Mapping):
        raise ValueError(f"{checkpoint}: not a recon checkpoint (no config entry)")
    try:
        cfg = load_stored_recon_config(state["config"])
    except ValueError as err:
        raise ValueError(f"{checkpoint}: config: {err}") from None
    model = model_for_weights(lambda: build_model(cfg), state["model"], source=checkpoint)
    model.eval()
    kind = cfg.data.kind
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    removed = remove_stale_temps(output)
    inputs = [Path(p) for p in inputs]
    failed, replaced, owner = 0, 0, {}
    for path in inputs:
        try:
            targets = _output_paths(output, path, fmt)
            if targets[0] in owner:  # x.h5 and x.npz, or a/x.h5 and b/x.h5
                raise ValueError(
                    f"its outputs {targets[0].name}, ... would overwrite those of "
                    f"{owner[targets[0]]}; reconstruct files with the same name into separate "
                    "folders"
                )
            k, m, S, fft_ndim = _load_input(path, kind)
            x = _reconstruct(model, k, m, S, fft_ndim)  # (B, *spatial) complex
            owner[targets[0]] = path
            earlier = any(t.exists() for t in targets)
            _save_npy(targets[0], x)
            mag = (np.abs(x).squeeze(0) if x.shape[0] == 1 else np.abs(x)).astype(np.float32)
            if fmt == "npy":
                _save_npy(targets[1], mag)
            else:
                _save_nifti(targets[1], mag)
            replaced += earlier
        except Exception as err:  # one bad input must not stop the others
            failed += 1
            msg = str(err).splitlines()[0] if str(err) else type(err).__name__
            print(f"error: {path}: {msg}", file=sys.stderr)
    notes = ([f"{failed} failed"] if failed else []) + output_notes(
        replaced=replaced, removed=removed
    )
    print(
        f"recon predict: wrote {len(inputs) - failed} of {len(inputs)} inputs to {output}"
        + (f" ({'; '.join(notes)})" if notes else "")
    )
    return failed


def _output_paths(output: Path, path: Path, fmt: str) -> tuple[Path, Path]:
    """``(<stem>_recon.npy, <stem>_recon.nii.gz or <stem>_magnitude.npy)`` of one input."""
    stem = path.name.split(".")[0]
    second = f"{stem}_magnitude.npy" if fmt == "npy" else f"{stem}_recon.nii.gz"
    return output / f"{stem}_recon.npy", output / second


def _reconstruct(model: torch.nn.Module, k: Tensor, m: Tensor, S: Tensor, fft_ndim: int) -> Any:
    """MoDL on each of the ``B`` items of ``k`` (scaled to a unit adjoint maximum and back)."""
    recons = []
    with torch.no_grad():
        for b in range(k.shape[0]):
            op = SenseOperator(
                S[b : b + 1], m[:1] if m.shape[0] == 1 else m[b : b + 1], fft_ndim=fft_ndim
            )
            y = k[b : b + 1]
            scale = op.A_adjoint(y).abs().max().clamp_min(1e-12)
            recons.append(model(y / scale, op)[0, 0] * scale)
    return torch.stack(recons).numpy()


def _save_npy(path: Path, arr: np.ndarray) -> None:
    atomic_save_numpy(path, arr)


def _save_nifti(path: Path, arr: np.ndarray) -> None:
    import nibabel as nib

    with atomic_path(path, keep_suffix=True) as tmp:
        nib.save(nib.Nifti1Image(arr, np.eye(4)), tmp)
