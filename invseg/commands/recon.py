"""MoDL reconstruction workflows: train on simulated k-space, predict from HDF5/NPZ files.

Config (YAML, every hyper-parameter; unknown keys are errors with a did-you-mean hint):

.. code-block:: yaml

    data:   {kind: 2d, phantom: shepp_logan, shape: [32, 32], num_coils: 4, acceleration: 4.0,
             mask: poisson, calib: 8, noise_std: 0.0, train_samples: 16, val_samples: 4, seed: 0}
    model:  {num_unrolls: 10, channels: 64, layers: 5, memory: invert, ...}  # MoDL arguments
    train:  {steps: 200, batch_size: 2, lr: 1.0e-3, loss: mse, ...}
    output: {dir: runs/recon_2d}

``data.kind``: ``2d`` (image ``(H, W)``), ``3d`` (slab ``(D, H, W)``, Poisson-disc ky-kz mask,
3D FFT) or ``cine`` (2D+time ``(T, H, W)``, beating phantom, ky-t mask, 2D FFT per frame).
Every sample is normalised so that its zero-filled image has maximum magnitude 1; prediction
applies the same normalisation and undoes it.
"""

from __future__ import annotations

import copy
import csv
import math
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import Tensor

from invseg._choices import closest
from invseg.recon.metrics import nmse, psnr, ssim
from invseg.recon.modl import MoDL
from invseg.recon.operators import SenseOperator
from invseg.recon.simulate import beating_phantom, mni152_slice, shepp_logan
from invseg.recon.transforms import SimulateKSpace
from invseg.runtime.checkpoint import load_checkpoint, save_checkpoint
from invseg.runtime.files import atomic_write_text

__all__ = ["RECON_DEFAULTS", "build_model", "load_recon_config", "predict_recon", "train_recon"]

#: Every key of a recon config, with its default.
RECON_DEFAULTS: dict[str, dict[str, Any]] = {
    "data": {
        "kind": "2d",  # 2d | 3d | cine
        "phantom": "shepp_logan",  # shepp_logan | mni152 (2d only); cine uses a beating phantom
        "shape": [32, 32],  # (H, W), (D, H, W) or (T, H, W)
        "num_coils": 4,
        "acceleration": 4.0,
        "mask": "poisson",  # poisson | cartesian | kt
        "calib": 8,  # calibration box side / central lines
        "noise_std": 0.0,  # complex noise per k-space sample (before normalisation)
        "train_samples": 16,
        "val_samples": 4,
        "seed": 0,
    },
    "model": {
        "num_unrolls": 10,
        "spatial_dims": 2,
        "channels": 64,
        "layers": 5,
        "shared_weights": True,
        "memory": "invert",
        "cg_iters": 10,
        "cg_tol": 1.0e-6,
        "mu_init": 0.05,
        "anchor_every": 2,
        "lipschitz": 0.9,
        "init": "adjoint",
        "fixed_point_iters": 50,
        "fixed_point_tol": 1.0e-6,
        "drift_tol": 5.0e-2,
        "dc_refine_steps": 1,
    },
    "train": {
        "steps": 200,
        "batch_size": 2,
        "lr": 1.0e-3,
        "loss": "mse",  # mse | l1 (on the complex image)
        "grad_clip": None,
        "seed": 0,
        "val_every": 50,
        "checkpoint_every": 50,
        "device": "cpu",  # cpu | cuda | auto
        "dtype": "float32",  # float32 | float64
    },
    "output": {"dir": "runs/recon"},
}

_KINDS = ("2d", "3d", "cine")
_LOSSES = ("mse", "l1")


def _hint(value: str, choices: Sequence[str]) -> str:
    m = closest(value, choices)
    return f" (did you mean {m!r}?)" if m else ""


def _merge(base: Mapping[str, Any], update: Mapping[str, Any], prefix: str = "") -> dict:
    out = copy.deepcopy(dict(base))
    for k, v in update.items():
        if k not in base:
            raise ValueError(f"unknown recon config key '{prefix}{k}'" + _hint(k, list(base)))
        if isinstance(base[k], dict):
            if not isinstance(v, Mapping):
                raise ValueError(f"recon config '{prefix}{k}' must be a section (a mapping)")
            out[k] = _merge(base[k], v, f"{prefix}{k}.")
        else:
            out[k] = v
    return out


def load_recon_config(
    path: Path | Mapping[str, Any], overrides: Sequence[str] = ()
) -> dict[str, Any]:
    """Read a recon YAML config, fill defaults, apply ``key=value`` overrides, validate.

    Args:
        path: YAML file or a mapping.
        overrides: dotted ``key=value`` strings, values parsed as YAML (``train.lr=3e-4``).

    Returns:
        The resolved config.

    Raises:
        ValueError: missing file, unknown key (with a hint) or bad value.

    Example:
        >>> cfg = load_recon_config({"data": {"kind": "2d"}}, ["train.steps=3"])
        >>> cfg["train"]["steps"], cfg["model"]["num_unrolls"]
        (3, 10)
    """
    if isinstance(path, Mapping):
        raw: Any = copy.deepcopy(dict(path))
    else:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"config '{path}' does not exist; try configs/recon_2d.yaml")
        raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, Mapping):
        raise ValueError("a recon config is a mapping with sections data, model, train, output")
    upd: dict[str, Any] = copy.deepcopy(dict(raw))
    for item in overrides:
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip():
            raise ValueError(f"override '{item}' must look like key=value, e.g. train.lr=3e-4")
        *parents, leaf = key.strip().split(".")
        node = upd
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value) if value.strip() else None
    cfg = _merge(RECON_DEFAULTS, upd)
    d, t = cfg["data"], cfg["train"]
    if d["kind"] not in _KINDS:
        raise ValueError(
            f"data.kind must be one of {_KINDS}, got {d['kind']!r}" + _hint(d["kind"], _KINDS)
        )
    if t["loss"] not in _LOSSES:
        raise ValueError(f"train.loss must be one of {_LOSSES}" + _hint(t["loss"], _LOSSES))
    ndim = 2 if d["kind"] == "2d" else 3
    if len(d["shape"]) != ndim:
        raise ValueError(f"data.shape must have {ndim} sizes for kind={d['kind']!r}")
    if cfg["model"]["spatial_dims"] != ndim:
        raise ValueError(
            f"model.spatial_dims must be {ndim} for data.kind={d['kind']!r} "
            "(3 for 3D slabs and 2D+time)"
        )
    if d["kind"] == "cine" and d["mask"] != "kt":
        raise ValueError("data.kind='cine' needs data.mask='kt' (a ky-t mask per frame)")
    if t["dtype"] not in ("float32", "float64"):
        raise ValueError("train.dtype must be 'float32' or 'float64'")
    return cfg


def build_model(cfg: Mapping[str, Any]) -> MoDL:
    """A :class:`MoDL` from the ``model`` section of a resolved config."""
    return MoDL(**cfg["model"])


# ----------------------------------------------------------------------------- data
def _image(d: Mapping[str, Any], rng: np.random.Generator) -> Tensor:
    shape = tuple(d["shape"])
    if d["kind"] == "cine":
        img = beating_phantom(
            shape[0],
            shape[1:],
            cycles=float(rng.uniform(0.7, 1.5)),
            amplitude=float(rng.uniform(0.15, 0.3)),
        )
        img = torch.roll(img, int(rng.integers(-shape[0], shape[0])), dims=0)
    elif d["kind"] == "3d":
        img = shepp_logan(shape, ndim=3)
    elif d["phantom"] == "mni152":
        img = mni152_slice(shape, index=float(rng.uniform(0.35, 0.65)))
    elif d["phantom"] == "shepp_logan":
        img = shepp_logan(shape)
    else:
        raise ValueError(
            f"data.phantom must be 'shepp_logan' or 'mni152', got {d['phantom']!r}"
            + _hint(d["phantom"], ("shepp_logan", "mni152"))
        )
    for dim in (-1, -2):  # random flips and small shifts: a family of phantoms
        if rng.random() < 0.5:
            img = img.flip(dim)
        img = torch.roll(img, int(rng.integers(-2, 3)), dims=dim)
    img = img * float(rng.uniform(0.7, 1.3))
    phase = float(rng.uniform(-math.pi, math.pi))
    return img.to(torch.complex64) * complex(math.cos(phase), math.sin(phase))


def simulate_dataset(d: Mapping[str, Any], n: int, seed: int) -> list[dict[str, Tensor]]:
    """``n`` normalised samples ``{"target", "kspace", "mask", "coil_maps"}`` for a data section."""
    rng = np.random.default_rng(seed)
    sim = SimulateKSpace(
        d["num_coils"],
        d["acceleration"],
        mask_type=d["mask"],
        calib=d["calib"],
        noise_std=d["noise_std"],
        seed=int(rng.integers(2**31 - 1)),
    )
    out = []
    for _ in range(n):
        x = _image(d, rng)
        k, m, S = sim(x[None])
        fft_ndim = 3 if d["kind"] == "3d" else 2
        op = SenseOperator(S[None], m[None], fft_ndim=fft_ndim)
        scale = op.A_adjoint(k[None]).abs().max().clamp_min(1e-12)
        out.append({"target": x[None] / scale, "kspace": k / scale, "mask": m, "coil_maps": S})
    return out


def collate(samples: Sequence[dict[str, Tensor]], kind: str, device, cdtype):
    y = torch.stack([s["kspace"] for s in samples]).to(device, cdtype)
    S = torch.stack([s["coil_maps"] for s in samples]).to(device, cdtype)
    m = torch.stack([s["mask"] for s in samples]).to(device)
    x = torch.stack([s["target"] for s in samples]).to(device, cdtype)
    return x, y, SenseOperator(S, m, fft_ndim=3 if kind == "3d" else 2)


def _evaluate(model: MoDL, data, kind, device, cdtype) -> dict[str, float]:
    model.eval()
    rows = []
    with torch.no_grad():
        for s in data:
            x, y, op = collate([s], kind, device, cdtype)
            pred = model(y, op)
            g, p = x.abs()[0, 0].cpu().numpy(), pred.abs()[0, 0].cpu().numpy()
            rows.append((psnr(g, p), ssim(g, p), nmse(g, p)))
    model.train()
    a = np.asarray(rows)
    return {
        "val_psnr": float(a[:, 0].mean()),
        "val_ssim": float(a[:, 1].mean()),
        "val_nmse": float(a[:, 2].mean()),
    }


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("train.device is cuda but CUDA is not available; use train.device=cpu")
    return torch.device(name)


# ----------------------------------------------------------------------------- train
def train_recon(
    config: Path,
    *,
    overrides: Sequence[str] = (),
    resume: bool = False,
    output: Path | None = None,
) -> Path:
    """Train MoDL (with MEL) on simulated multi-coil k-space described by a config.

    Writes ``<output>/last.pt`` and ``best.pt`` (atomic; loadable with
    ``torch.load(weights_only=True)``), ``metrics.csv`` (step, loss, mu, validation PSNR/SSIM/NMSE,
    seconds) and ``config.yaml``.

    Args:
        config: YAML config (e.g. ``configs/recon_2d.yaml``).
        overrides: ``key=value`` overrides (``train.steps=2``).
        resume: continue from ``<output>/last.pt``.
        output: run folder (default: ``output.dir`` of the config).

    Returns:
        Path of the best checkpoint.

    Raises:
        ValueError: bad config, or ``resume`` without a ``last.pt``.
    """
    cfg = load_recon_config(config, overrides)
    out = Path(output) if output is not None else Path(cfg["output"]["dir"])
    out.mkdir(parents=True, exist_ok=True)
    d, t = cfg["data"], cfg["train"]
    device = _device(t["device"])
    rdtype = torch.float64 if t["dtype"] == "float64" else torch.float32
    cdtype = torch.complex128 if rdtype == torch.float64 else torch.complex64
    torch.manual_seed(t["seed"])
    model = build_model(cfg).to(device, rdtype)
    opt = torch.optim.Adam(model.parameters(), lr=t["lr"])
    train_data = simulate_dataset(d, d["train_samples"], d["seed"])
    val_data = simulate_dataset(d, d["val_samples"], d["seed"] + 10_000)
    step, best = 0, -math.inf
    metrics_path = out / "metrics.csv"
    fields = ["step", "loss", "mu", "val_psnr", "val_ssim", "val_nmse", "seconds"]
    if resume:
        last = out / "last.pt"
        if not last.is_file():
            raise ValueError(f"resume=True but {last} does not exist; train without resume first")
        state = load_checkpoint(last, map_location=device)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step, best = int(state["step"]), float(state["best"])
    else:
        atomic_write_text(metrics_path, ",".join(fields) + "\n")
    atomic_write_text(out / "config.yaml", yaml.safe_dump(cfg, sort_keys=False))
    rng = np.random.default_rng(t["seed"] + step)
    t0 = time.perf_counter()

    def save(name: str) -> Path:
        return save_checkpoint(
            {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "step": step,
                "best": best,
                "config": cfg,
            },
            out / name,
        )

    rows: list[dict[str, Any]] = []
    while step < t["steps"]:
        idx = rng.choice(len(train_data), size=min(t["batch_size"], len(train_data)), replace=False)
        x, y, op = collate([train_data[i] for i in idx], d["kind"], device, cdtype)
        opt.zero_grad(set_to_none=True)
        err = model(y, op) - x
        loss = err.abs().square().mean() if t["loss"] == "mse" else err.abs().mean()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss at step {step}; lower train.lr")
        loss.backward()
        if t["grad_clip"]:
            torch.nn.utils.clip_grad_norm_(model.parameters(), t["grad_clip"])
        opt.step()
        step += 1
        row: dict[str, Any] = {
            "step": step,
            "loss": f"{loss.item():.6g}",
            "mu": f"{model.chain.blocks[0].dc.mu.item():.5g}",
        }
        if step % t["val_every"] == 0 or step == t["steps"]:
            m = _evaluate(model, val_data, d["kind"], device, cdtype)
            row.update({k: f"{v:.5g}" for k, v in m.items()})
            if m["val_psnr"] > best:
                best = m["val_psnr"]
                save("best.pt")
        row["seconds"] = f"{time.perf_counter() - t0:.2f}"
        rows.append(row)
        if step % t["checkpoint_every"] == 0 or step == t["steps"]:
            _append_rows(metrics_path, fields, rows)
            rows = []
            save("last.pt")
    _append_rows(metrics_path, fields, rows)
    if not (out / "best.pt").exists():
        save("best.pt")
    return out / "best.pt"


def _append_rows(path: Path, fields: list[str], rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    text = path.read_text() if path.exists() else ",".join(fields) + "\n"
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writerows(rows)
    atomic_write_text(path, text + buf.getvalue())


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
        raise ValueError(f"fmt must be one of {fmts}, got {fmt!r}" + _hint(fmt, fmts))
    state = load_checkpoint(checkpoint)
    if "config" not in state:
        raise ValueError(f"{checkpoint}: not a recon checkpoint (no config entry)")
    cfg = load_recon_config(state["config"])
    model = build_model(cfg)
    model.load_state_dict(state["model"])
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
    import os
    import tempfile

    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npy.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, arr)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _save_nifti(path: Path, arr: np.ndarray) -> None:
    import os
    import tempfile

    import nibabel as nib

    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".nii.gz")
    os.close(fd)
    try:
        nib.save(nib.Nifti1Image(arr, np.eye(4)), tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
