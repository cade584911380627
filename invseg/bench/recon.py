"""``invseg bench recon``: MoDL memory, gradient accuracy, step time, quality and scale.

All rows of one table come from this process, so they are comparable:

1. per memory mode (``store``, ``checkpoint``, ``invert`` with an anchor at every unroll (the
   default), ``invert`` with anchors from the drift budget, pure ``invert``): exact activation
   bytes, relative gradient error vs ``store`` in float32 at 10 and 30 unrolls, and the step
   time at 10 unrolls (median of interleaved repeats, as a ratio to ``store``), on weights
   trained for a few hundred steps by ``invseg recon train`` (fresh weights make the denoiser
   inverse look cheap; :func:`warm_config`);
2. quality on simulated 2D+time (cine) data (:mod:`invseg.bench.recon_quality`): zero-filled,
   CG-SENSE (its mu tuned on the training samples) and MoDL with 1, 4 and 10 unrolls, each
   trained by ``invseg recon train``, PSNR/SSIM mean ± std over held-out samples and seeds;
3. scale: the largest 3D slab (slices x 256 x 256, 8 coils) and cine size (frames x 256 x 256)
   that trains in 12 GB at 10 and 30 unrolls, from exact activation bytes per voxel.

Every training run is ``invseg recon train`` (the one training loop) in a folder under ``runs``
(``bench_recon/`` by default) that keeps its ``config.yaml``; the section names them.
"""

from __future__ import annotations

import platform
import statistics
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from invseg.bench import recon_quality
from invseg.bench.report import update_section
from invseg.engine import InverseDriftWarning, activation_bytes
from invseg.recon.modl import MoDL
from invseg.recon.operators import SenseOperator
from invseg.recon.simulate import birdcage_maps, poisson_disc_mask, shepp_logan
from invseg.runtime.device import resolve_device

__all__ = ["PARTS", "PRESETS", "run"]

#: (label, memory mode, MoDL keyword arguments) of the speed/memory/accuracy table.
VARIANTS = (
    ("store", "store", {}),
    ("checkpoint", "checkpoint", {}),
    ("invert (anchor every unroll, default)", "invert", {}),
    ("invert (drift-budget anchors, auto)", "invert", {"anchor_every": "auto"}),
    ("invert (pure)", "invert", {"anchor_every": None}),
)
#: Sizes per preset; ``full`` is meant for a GPU (``--device cuda``).
PRESETS: dict[str, dict] = {
    "quick": {
        "n": 32, "coils": 4, "channels": 16, "reps": 5, "warm_steps": 120,
        "cine_shape": (8, 32, 32), "cine_coils": 4, "cine_channels": 16, "calib": 2,
        "train": 16, "val": 8,
        "seeds": 2, "steps": 240, "batch": 2, "lr": 3e-3,
    },
    "full": {
        "n": 64, "coils": 8, "channels": 64, "reps": 7, "warm_steps": 300,
        "cine_shape": (16, 64, 64), "cine_coils": 8, "cine_channels": 64, "calib": 4,
        "train": 64, "val": 16,
        "seeds": 3, "steps": 600, "batch": 2, "lr": 1e-3,
    },
}  # fmt: skip
GIB12 = 12 * 2**30
#: Training samples of the run that trains the speed table's weights (:func:`warm_config`).
WARM_SAMPLES = 4
#: Tables of the section, in order (``--parts``).
PARTS = ("speed", "quality", "scale")
#: Columns of the 12 GiB table: ``{column: (memory mode, drift-budget anchors?)}``.
SCALE_MODES = {
    "store": ("store", False),
    "checkpoint": ("checkpoint", False),
    "invert": ("invert", False),
    "invert auto": ("invert", True),
}


def _problem_2d(n: int, coils: int, device: torch.device):
    S = birdcage_maps(coils, n)[None].to(device, torch.complex64)
    op = SenseOperator(S, poisson_disc_mask(n, 4.0, calib=max(4, n // 8), seed=0)[None, None])
    op = op.to(device)
    x = shepp_logan(n).to(device, torch.complex64)[None, None]
    return op, x, op.A(x)


def _model(unrolls: int, memory: str, channels: int, device, **kw) -> MoDL:
    torch.manual_seed(0)
    return MoDL(unrolls, channels=channels, layers=5, memory=memory, **kw).to(device)


def _loss(model: MoDL, y, op, x) -> torch.Tensor:
    return (model(y, op) - x).abs().square().mean()


def _grad_vector(model: MoDL, y, op, x) -> torch.Tensor:
    model.zero_grad(set_to_none=True)
    with warnings.catch_warnings():  # pure inversion drifts: reported in the table instead
        warnings.simplefilter("ignore", InverseDriftWarning)
        _loss(model, y, op, x).backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def warm_config(cfg: dict, *, device: str, run_dir: Path) -> dict:
    """The ``invseg recon train`` config that trains the speed table's weights.

    A 10-unroll ``store`` MoDL with the speed problem's sizes (2D Shepp-Logan family, ``n`` x
    ``n``, ``coils`` coils, Poisson-disc 4x) for ``warm_steps`` steps; one validation at the end.
    """
    n = cfg["n"]
    return {
        "data": {
            "kind": "2d", "phantom": "shepp_logan", "shape": [n, n], "num_coils": cfg["coils"],
            "acceleration": 4.0, "mask": "poisson", "calib": max(4, n // 8),
            "noise_std": 0.0, "train_samples": WARM_SAMPLES, "val_samples": 1, "seed": 0,
        },
        "model": {
            "num_unrolls": 10, "spatial_dims": 2, "channels": cfg["channels"], "layers": 5,
            "memory": "store",
        },
        "train": {
            "steps": cfg["warm_steps"], "batch_size": 1, "lr": cfg["lr"], "loss": "mse",
            "seed": 0, "val_every_steps": cfg["warm_steps"], "checkpoint_every": None,
            "device": device, "dtype": "float32", "progress": False,
        },
        "output": {"dir": str(run_dir)},
    }  # fmt: skip


def _trained(cfg: dict, device: torch.device, run_dir: Path) -> MoDL:
    """A 10-unroll MoDL trained by ``invseg recon train`` on :func:`warm_config` (``run_dir``).

    Trained weights use the denoiser's Lipschitz budget, which is what makes its fixed-point
    inverse slow (about 4 passes on fresh weights, 15 once trained).
    """
    config = warm_config(cfg, device=str(device), run_dir=run_dir)
    return recon_quality.trained_modl(config, recon_quality.train_row(config, run_dir), device)


def _variant(n: int, mode: str, kw: dict, src: MoDL, cfg: dict, device) -> MoDL:
    """An ``n``-unroll variant with the shared denoiser and DC weights of ``src``."""
    m = _model(n, mode, cfg["channels"], device, **kw)
    for name in ("denoiser", "dc"):
        part = getattr(src.chain.blocks[0], name).state_dict()
        getattr(m.chain.blocks[0], name).load_state_dict(part)  # shared by every unroll
    return m


def _passes_per_inversion(m: MoDL, y, op, x) -> float:
    """Denoiser passes per rebuilt unroll input in one backward (the last one is the
    recomputation that backward needs anyway)."""
    calls: list[None] = []
    hook = m.chain.blocks[0].denoiser.f.register_forward_pre_hook(lambda *_: calls.append(None))
    m.zero_grad(set_to_none=True)
    loss = _loss(m, y, op, x)
    forward = len(calls)
    loss.backward()
    hook.remove()
    kept = -(-m.num_unrolls // m.anchor_every)  # anchors: unrolls 0, k, 2k, ...
    return (len(calls) - forward - kept) / max(m.num_unrolls - kept, 1)


def _modes_table(cfg: dict, device: torch.device, runs: Path) -> dict[str, dict]:
    """Memory, gradient error (10, 30 unrolls) and step time (10 unrolls) per variant."""
    op, x, y = _problem_2d(cfg["n"], cfg["coils"], device)
    src = _trained(cfg, device, runs / "speed-warm")
    out: dict[str, dict] = {label: {} for label, _, _ in VARIANTS}
    out["store"]["lipschitz"] = src.certified_lipschitz()
    for n in (10, 30):
        ref = _grad_vector(_variant(n, "store", {}, src, cfg, device), y, op, x)
        for label, mode, kw in VARIANTS:
            m = _variant(n, mode, kw, src, cfg, device)
            out[label][f"bytes{n}"] = activation_bytes(lambda m=m: _loss(m, y, op, x))
            g = _grad_vector(m, y, op, x)
            out[label][f"err{n}"] = float((g - ref).norm() / ref.norm())
            out[label]["anchor_every"] = m.anchor_every if mode == "invert" else None
    models = {label: _variant(10, mode, kw, src, cfg, device) for label, mode, kw in VARIANTS}
    for label, m in models.items():
        _grad_vector(m, y, op, x)  # warm-up
        if m.memory == "invert" and m.anchor_every not in (None, 1):
            out[label]["passes"] = _passes_per_inversion(m, y, op, x)
    times: dict[str, list[float]] = {label: [] for label in models}
    for _ in range(cfg["reps"]):  # interleaved: load on the machine hits every variant alike
        for label, m in models.items():
            _sync(device)
            t0 = time.perf_counter()
            _grad_vector(m, y, op, x)
            _sync(device)
            times[label].append(time.perf_counter() - t0)
    for label, ts in times.items():
        out[label]["seconds"] = statistics.median(ts)
    return out


def _largest(per_voxel: float, fixed: float, plane: int) -> int:
    """Largest number of slices (or frames) whose bytes fit in 12 GiB."""
    return max(0, int((GIB12 - fixed) // (per_voxel * plane)))


def _scale(cfg: dict) -> dict[str, dict[int, int]]:
    """Largest slab/cine depth at 256 x 256, 8 coils, 64 channels, from exact bytes per voxel.

    Activation bytes are linear in the voxel count (convolutions with zero padding, pointwise
    maths); they are measured at two depths on the CPU and extrapolated. The peak of a step is
    what forward keeps plus, for ``checkpoint`` and ``invert``, the graph of the one unroll
    being recomputed in backward (the 1-unroll ``store`` bytes). Inputs (k-space, coil maps,
    target) and parameters with gradients and Adam state are added; CUDA workspace is not.
    """
    hw, coils, plane = (8, 8), 8, 256 * 256
    per_voxel: dict[tuple[int, str], float] = {}
    for n in (1, 10, 30):
        torch.manual_seed(0)
        m = MoDL(n, spatial_dims=3, channels=64, lipschitz_grid=16)  # one SVD set per model
        for mode in ("store",) if n == 1 else SCALE_MODES:
            m.memory, auto = SCALE_MODES[mode]
            m.chain.anchor_every = m.pick_anchors() if auto else 1
            b = []
            for depth in (2, 4):
                S = birdcage_maps(coils, (depth, *hw), ndim=3)[None].to(torch.complex64)
                op = SenseOperator(S, torch.ones(1, 1, 1, *hw))
                x = torch.randn(1, 1, depth, *hw, dtype=torch.complex64)
                b.append(activation_bytes(lambda m=m, op=op, x=x: _loss(m, op.A(x), op, x)))
            per_voxel[n, mode] = (b[1] - b[0]) / (2 * hw[0] * hw[1])
    params = sum(p.numel() * 4 * 4 for p in m.parameters())  # weights, grads, Adam state
    inputs = coils * 8 * 2 + 8 * 2  # k-space and maps (complex64), target, per voxel
    out: dict[str, dict[int, int]] = {}
    for n in (10, 30):
        row = out.setdefault(f"{n} unrolls", {})
        for mode in SCALE_MODES:
            peak = per_voxel[n, mode] + (0 if mode == "store" else per_voxel[1, "store"])
            row[mode] = _largest(peak + inputs, params, plane)
    return out


def run(
    *,
    quick: bool = False,
    output: Path = Path("docs/benchmarks.md"),
    device: str = "cpu",
    parts: Sequence[str] = PARTS,
    runs: str | Path = "bench_recon",
) -> str:
    """Run the recon benchmark and write its section of ``output``.

    Args:
        quick: the ``quick`` preset (minutes on one CPU core); otherwise ``full`` (for a GPU:
            ``invseg bench recon --device cuda``).
        output: the benchmarks page.
        device: ``"cpu"`` or ``"cuda"``.
        parts: which tables (:data:`PARTS`): ``speed`` (memory modes), ``quality`` (cine
            training, most of the time), ``scale`` (12 GiB sizes).
        runs: folder of the ``invseg recon train`` runs the tables train (``speed-warm/``,
            ``quality/modl<n>-seed<seed>/``), each with its ``config.yaml``.

    Returns:
        The markdown section.

    Raises:
        ValueError: an unknown part.
    """
    unknown = sorted(set(parts) - set(PARTS))
    if unknown or not parts:
        raise ValueError(f"parts must be some of {PARTS}, got {list(parts)}")
    dev = resolve_device(device)
    name = "quick" if quick else "full"
    cfg = PRESETS[name]
    t0 = time.perf_counter()
    lines = []
    runs = Path(runs)
    if "speed" in parts:
        lines += _speed_md(cfg, _modes_table(cfg, dev, runs), runs)
    if "quality" in parts:
        quality = recon_quality.measure(cfg, dev, runs)
        lines += recon_quality.markdown(cfg, quality, PRESETS["full"], runs)
    if "scale" in parts:
        lines += _scale_md(_scale(cfg))
    head = [
        "## MoDL reconstruction (MEL)",
        "",
        f"`invseg bench recon{' --quick' if quick else ''}` (preset `{name}`) on {dev} "
        f"({platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads), {time.perf_counter() - t0:.0f} s.",
        "",
    ]
    md = "\n".join(head + lines)
    update_section(Path(output), "recon", md)
    return md


def _speed_md(cfg: dict, modes: dict[str, dict], runs: Path) -> list[str]:
    labels = [label for label, _, _ in VARIANTS]
    st = modes["store"]["seconds"]
    inv1, auto = labels[2], labels[3]
    lines = [
        "### Memory modes, gradients and step time",
        "",
        f"2D {cfg['n']}x{cfg['n']}, {cfg['coils']} coils, Poisson-disc 4x, denoiser 5 conv x "
        f"{cfg['channels']} ch, shared weights, MoDL defaults (CG tol 1e-5, cap 30, mu floor "
        "0.05, drift budget 1e-3), float32. Weights trained first: "
        f"`invseg recon train {runs.as_posix()}/speed-warm/config.yaml`, {cfg['warm_steps']} "
        f"Adam steps (lr {cfg['lr']:g}, batch 1) in `store` mode on {WARM_SAMPLES} simulated "
        "Shepp-Logan samples of the same size, coils and mask density (formerly on the "
        "measured problem itself); the denoiser's certified Lipschitz bound is then "
        f"{modes['store']['lipschitz']:.2f} (setting 0.9), as in real training. *passes*: "
        "denoiser passes per rebuilt unroll input (fixed point to 1e-6, the last pass is the "
        "recomputation backward needs anyway).",
        "",
        "| variant | anchors every | activation MiB @10 | @30 | grad error @10 | @30 | "
        "passes | step @10 (ms) | / store |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for v in labels:
        r = modes[v]
        passes = f"{r['passes']:.1f}" if "passes" in r else "-"
        lines.append(
            f"| {v} | {r['anchor_every'] or '-'} | {r['bytes10'] / 2**20:.3f} | "
            f"{r['bytes30'] / 2**20:.3f} | {r['err10']:.1e} | {r['err30']:.1e} | {passes} | "
            f"{r['seconds'] * 1e3:.0f} | {r['seconds'] / st:.2f}x |"
        )
    ck = modes["checkpoint"]["seconds"]
    for v in (inv1, auto):
        r = modes[v]
        ok = r["seconds"] <= 1.4 * st and r["seconds"] < ck and r["err30"] <= 1e-4
        lines.append(
            f"\n{v}: {r['seconds'] / st:.2f}x store, {r['seconds'] / ck:.2f}x checkpoint, "
            f"grad error {r['err30']:.1e} at 30 unrolls (targets <= 1.4x store, below "
            f"checkpoint, <= 1e-4: {'met' if ok else 'NOT met'})."
        )
    return lines


def _scale_md(scale: dict[str, dict[int, int]]) -> list[str]:
    return [
        "",
        "### Largest size that trains in 12 GiB (64 channels, 8 coils, 256 x 256 in-plane)",
        "",
        "Slices of a 3D slab (slices x 256 x 256) or frames of a cine (frames x 256 x 256): the "
        "activations per voxel are the same for both (3D convolutions; the FFT dims do not "
        "change what is saved). From exact activation bytes per voxel (measured, linear in "
        "voxels): what forward keeps plus, for checkpoint and invert, the graph of the one "
        "unroll recomputed in backward; inputs and parameters with Adam state added. CG "
        "vectors and FFT/cuDNN workspace are not included: leave headroom.",
        "",
        "| slices or frames at | store | checkpoint | invert (anchor every unroll) | "
        "invert (drift-budget anchors) |",
        "|---|---|---|---|---|",
        *[
            f"| {k} | {v['store']} | {v['checkpoint']} | {v['invert']} | {v['invert auto']} |"
            for k, v in scale.items()
        ],
        "",
    ]
