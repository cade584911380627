"""``invseg bench recon``: MoDL memory, gradient accuracy, step time, quality and scale.

All rows of one table come from this process, so they are comparable:

1. per memory mode (``store``, ``checkpoint``, ``invert`` with an anchor at every unroll (the
   default), ``invert`` with anchors from the drift budget, pure ``invert``): exact activation
   bytes, relative gradient error vs ``store`` in float32 at 10 and 30 unrolls, and the step
   time at 10 unrolls (median of interleaved repeats, as a ratio to ``store``), on weights
   trained for a few hundred steps (fresh weights make the denoiser inverse look cheap);
2. quality on simulated 2D+time (cine) data: zero-filled, CG-SENSE (its mu tuned on the
   training samples) and MoDL with 1, 4 and 10 unrolls, PSNR/SSIM mean ± std over validation
   samples and seeds;
3. scale: the largest 3D slab (slices x 256 x 256, 8 coils) and cine size (frames x 256 x 256)
   that trains in 12 GB at 10 and 30 unrolls, from exact activation bytes per voxel.
"""

from __future__ import annotations

import platform
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from invseg.bench.report import update_section
from invseg.engine import InverseDriftWarning, activation_bytes
from invseg.recon.baselines import cg_sense, zero_filled
from invseg.recon.metrics import psnr, ssim
from invseg.recon.modl import MoDL
from invseg.recon.operators import SenseOperator
from invseg.recon.simulate import beating_phantom, birdcage_maps, poisson_disc_mask, shepp_logan
from invseg.recon.transforms import SimulateKSpace
from invseg.runtime.device import resolve_device

__all__ = ["PRESETS", "run"]

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
#: Columns of the 12 GiB table: memory mode, and ``auto`` for the drift-budget anchors.
SCALE_MODES = ("store", "checkpoint", "invert", "invert auto")


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


def _trained(cfg: dict, op, x, y, device: torch.device) -> MoDL:
    """A 10-unroll MoDL after ``warm_steps`` Adam steps on the speed problem.

    Trained weights use the denoiser's Lipschitz budget, which is what makes its fixed-point
    inverse slow (about 4 passes on fresh weights, 15 once trained).
    """
    m = _model(10, "store", cfg["channels"], device)
    opt = torch.optim.Adam(m.parameters(), lr=cfg["lr"])
    for _ in range(cfg["warm_steps"]):
        opt.zero_grad(set_to_none=True)
        _loss(m, y, op, x).backward()
        opt.step()
    return m


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
    calls = [0]
    hook = m.chain.blocks[0].denoiser.f.register_forward_pre_hook(
        lambda *_: calls.__setitem__(0, calls[0] + 1)
    )
    m.zero_grad(set_to_none=True)
    loss = _loss(m, y, op, x)
    forward = calls[0]
    loss.backward()
    hook.remove()
    kept = -(-m.num_unrolls // m.anchor_every)  # anchors: unrolls 0, k, 2k, ...
    return (calls[0] - forward - kept) / max(m.num_unrolls - kept, 1)


def _modes_table(cfg: dict, device: torch.device) -> dict[str, dict]:
    """Memory, gradient error (10, 30 unrolls) and step time (10 unrolls) per variant."""
    op, x, y = _problem_2d(cfg["n"], cfg["coils"], device)
    src = _trained(cfg, op, x, y, device)
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


def _cine_data(cfg: dict, count: int, seed: int) -> list[tuple]:
    """``count`` normalised cine samples ``(x, y, op)`` (beating phantom, ky-t 6x)."""
    rng = np.random.default_rng(seed)
    T, H, W = cfg["cine_shape"]
    sim = SimulateKSpace(cfg["cine_coils"], 6.0, mask_type="kt", calib=cfg["calib"], seed=seed)
    out = []
    for _ in range(count):
        img = beating_phantom(
            T, (H, W), cycles=float(rng.uniform(0.7, 1.5)), amplitude=float(rng.uniform(0.15, 0.3))
        )
        img = torch.roll(img, int(rng.integers(-T, T)), dims=0)
        phase = float(rng.uniform(-np.pi, np.pi))
        x = img.to(torch.complex64) * complex(np.cos(phase), np.sin(phase))
        k, m, S = sim(x[None])
        op = SenseOperator(S[None], m[None], fft_ndim=2)
        scale = op.A_adjoint(k[None]).abs().max().clamp_min(1e-12)
        out.append((x[None, None] / scale, k[None] / scale, S[None], m[None]))
    return out


def _batch(samples, device):
    x, y, S, m = (torch.cat([s[i] for s in samples]).to(device) for i in range(4))
    return x, y, SenseOperator(S, m, fft_ndim=2)


def _scores(fn, val, device) -> list[tuple[float, float]]:
    rows = []
    for s in val:
        x, y, op = _batch([s], device)
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


def _quality(cfg: dict, device: torch.device) -> dict[str, np.ndarray]:
    """PSNR/SSIM rows per method; MoDL rows pool validation samples over seeds."""
    val = _cine_data(cfg, cfg["val"], 10_000)
    mu = _tune_cg_sense(_cine_data(cfg, cfg["train"], 0), device)
    res = {
        "zero-filled": np.asarray(_scores(zero_filled, val, device)),
        f"CG-SENSE (mu {mu:g})": np.asarray(_scores(_cg_sense(mu), val, device)),
    }
    for n in (1, 4, 10):
        rows = []
        for seed in range(cfg["seeds"]):
            train = _cine_data(cfg, cfg["train"], seed)
            torch.manual_seed(seed)
            # store: the same gradients as every memory mode, and the fastest on small data
            model = MoDL(
                n, spatial_dims=3, channels=cfg["cine_channels"], memory="store", mu_init=0.1
            ).to(device)
            opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
            rng = np.random.default_rng(seed)
            for _ in range(cfg["steps"]):
                idx = rng.choice(len(train), size=cfg["batch"], replace=False)
                x, y, op = _batch([train[i] for i in idx], device)
                opt.zero_grad(set_to_none=True)
                _loss(model, y, op, x).backward()
                opt.step()
            model.eval()
            rows += _scores(model, val, device)
        res[f"MoDL {n} unroll{'s' if n > 1 else ''}"] = np.asarray(rows)
    return res


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
            m.memory = mode.split()[0]
            m.chain.anchor_every = 1
            if mode == "invert auto":
                m.pick_anchors()  # the drift-budget spacing
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


def _fmt_rows(quality: dict[str, np.ndarray]) -> list[str]:
    rows = []
    for k, a in quality.items():
        rows.append(
            f"| {k} | {a[:, 0].mean():.2f} ± {a[:, 0].std():.2f} | "
            f"{a[:, 1].mean():.4f} ± {a[:, 1].std():.4f} | {len(a)} |"
        )
    return rows


def run(
    *, quick: bool = False, output: Path = Path("docs/benchmarks.md"), device: str = "cpu"
) -> str:
    """Run the recon benchmark and write its section of ``output``.

    Args:
        quick: the ``quick`` preset (minutes on one CPU core); otherwise ``full`` (for a GPU:
            ``invseg bench recon --device cuda``).
        output: the benchmarks page.
        device: ``"cpu"`` or ``"cuda"``.

    Returns:
        The markdown section.
    """
    dev = resolve_device(device)
    name = "quick" if quick else "full"
    cfg = PRESETS[name]
    t0 = time.perf_counter()
    modes = _modes_table(cfg, dev)
    quality = _quality(cfg, dev)
    scale = _scale(cfg)
    md = _markdown(name, cfg, dev, modes, quality, scale, time.perf_counter() - t0)
    update_section(Path(output), "recon", md)
    return md


def _markdown(name, cfg, dev, modes, quality, scale, seconds) -> str:
    labels = [label for label, _, _ in VARIANTS]
    st = modes["store"]["seconds"]
    inv1, auto = labels[2], labels[3]
    lines = [
        "## MoDL reconstruction (MEL)",
        "",
        f"`invseg bench recon{' --quick' if name == 'quick' else ''}` (preset `{name}`) on "
        f"{dev} ({platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads), {seconds:.0f} s. Speed/memory/accuracy: 2D "
        f"{cfg['n']}x{cfg['n']}, {cfg['coils']} coils, Poisson-disc 4x, denoiser 5 conv x "
        f"{cfg['channels']} ch, shared weights, MoDL defaults (CG tol 1e-5, cap 30, mu floor "
        "0.05, drift budget 1e-3), float32. Weights trained first: "
        f"{cfg['warm_steps']} Adam steps (lr {cfg['lr']:g}) in `store` mode on the same "
        f"problem; the denoiser's certified Lipschitz bound is then "
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
    q = {k: v[:, 0].mean() for k, v in quality.items()}
    cg = next(k for k in q if k.startswith("CG-SENSE"))
    T, H, W = cfg["cine_shape"]
    lines += [
        "",
        f"### Quality on simulated cine ({T}x{H}x{W}, {cfg['cine_coils']} coils, ky-t 6x, "
        f"{cfg['calib']} calibration lines)",
        "",
        f"{cfg['steps']} Adam steps (lr {cfg['lr']:g}, batch {cfg['batch']}, {cfg['train']} "
        f"training samples) per depth and seed, {cfg['seeds']} seeds, {cfg['val']} held-out "
        "samples; MoDL rows pool samples over seeds. CG-SENSE's mu is the best of 1e-3..1e-1 "
        "by mean PSNR on the training samples of seed 0.",
        "",
        "| method | PSNR (dB) | SSIM | n |",
        "|---|---|---|---|",
        *_fmt_rows(quality),
        "",
        f"10 vs 4 unrolls: {q['MoDL 10 unrolls'] - q['MoDL 4 unrolls']:+.2f} dB (target >= "
        f"+0.5); MoDL-10 vs CG-SENSE: {q['MoDL 10 unrolls'] - q[cg]:+.2f} dB (target "
        ">= +2). The full preset (`invseg bench recon --device cuda`) trains "
        f"{PRESETS['full']['steps']} steps on {'x'.join(map(str, PRESETS['full']['cine_shape']))}.",
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
    return "\n".join(lines)
