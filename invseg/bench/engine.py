"""``invseg bench engine``: the coupling engine against plain autograd, checkpointing and memcnn.

Every row runs in one process on the same couplings (copies of the same weights) and the same
input, so the numbers are directly comparable.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch
from torch import Tensor, nn

from invseg.bench.harness import (
    can_plot,
    describe_device,
    interleaved_seconds,
    mib,
    peak_cuda_bytes,
)
from invseg.bench.peers import BlockCheckpoint, Offloaded
from invseg.bench.report import update_section
from invseg.engine import AdditiveCoupling, InvertibleSequential, activation_bytes, import_memcnn
from invseg.runtime.plots import save_figure


def residual_function(channels: int) -> nn.Module:
    """The coupling's F and G: GroupNorm -> LeakyReLU -> 3×3×3 conv (as in the U-Nets)."""
    return nn.Sequential(
        nn.GroupNorm(min(4, channels), channels),
        nn.LeakyReLU(0.01),
        nn.Conv3d(channels, channels, 3, padding=1),
    )


def couplings(depth: int, channels: int, *, seed: int = 0) -> list[AdditiveCoupling]:
    """``depth`` additive couplings on ``channels`` channels, with seeded weights."""
    torch.manual_seed(seed)
    return [
        AdditiveCoupling(residual_function(channels // 2), residual_function(channels // 2))
        for _ in range(depth)
    ]


def memcnn_chain(blocks: list[AdditiveCoupling]) -> nn.Module:
    """The same couplings, each wrapped in memcnn's ``InvertibleModuleWrapper``."""
    memcnn = import_memcnn()
    wrapped = []
    for b in blocks:
        theirs = memcnn.AdditiveCoupling(copy.deepcopy(b.f), copy.deepcopy(b.g))
        wrapped.append(memcnn.InvertibleModuleWrapper(theirs, keep_input=False))
    return nn.Sequential(*wrapped)


def _contenders(blocks: list[AdditiveCoupling]) -> dict[str, nn.Module]:
    chains = {
        mode: InvertibleSequential(*copy.deepcopy(blocks), memory=mode)
        for mode in ("store", "checkpoint", "invert")
    }
    chains["invert, anchor every block"] = InvertibleSequential(
        *copy.deepcopy(blocks), memory="invert", anchor_every=1
    )
    try:
        chains["memcnn wrapper"] = memcnn_chain(blocks)
    except ImportError:  # memcnn is optional: the row is left out without it
        pass
    plain = copy.deepcopy(blocks)
    chains["selective checkpoint (torch)"] = BlockCheckpoint(plain, policy="selective")
    chains["save_on_cpu (torch)"] = Offloaded(InvertibleSequential(*plain, memory="store"))
    return chains


def _training_step(model: nn.Module, x: Tensor) -> Callable[[], None]:
    def step() -> None:
        model.zero_grad(set_to_none=True)
        # memcnn frees the storage of its input, so every step gets a fresh non-leaf copy.
        model(x.clone().requires_grad_(False) * 1.0).square().mean().backward()

    return step


def compare_modes(
    *, depth: int, channels: int, size: int, device: torch.device, repeats: int
) -> pd.DataFrame:
    """Activation bytes, step time and (CUDA) peak memory per memory mechanism."""
    x = torch.randn(1, channels, size, size, size, device=device)
    models = {
        name: model.to(device) for name, model in _contenders(couplings(depth, channels)).items()
    }
    steps = {name: _training_step(model, x) for name, model in models.items()}
    seconds = interleaved_seconds(list(steps.values()), device, repeats)
    rows = []
    for (name, model), step, s in zip(models.items(), steps.values(), seconds):
        held = activation_bytes(lambda m=model: m(x.clone() * 1.0).square().mean())
        held += getattr(model, "device_bytes", 0)  # save_on_cpu hides its tensors from hooks
        rows.append(
            {
                "mechanism": name,
                "activation MiB": held / 2**20,
                "step s": s,
                "peak CUDA MiB": peak_cuda_bytes(step, device),
            }
        )
    frame = pd.DataFrame(rows).set_index("mechanism")
    frame["time vs store"] = frame["step s"] / frame.loc["store", "step s"]
    return frame


def memory_vs_depth(
    depths: tuple[int, ...], *, channels: int, size: int, device: torch.device
) -> pd.DataFrame:
    """Activation bytes per training step against chain depth for the three modes."""

    def row(depth: int, x: Tensor) -> dict[str, float]:
        out = {}
        for mode in ("store", "checkpoint", "invert"):
            chain = InvertibleSequential(*couplings(depth, channels), memory=mode).to(device)
            out[mode] = activation_bytes(lambda c=chain: c(x).square().mean()) / 2**20
        return out

    return _per_depth(depths, row, channels=channels, size=size, device=device)


def inverse_drift(
    depths: tuple[int, ...], *, channels: int, size: int, device: torch.device
) -> pd.DataFrame:
    """Relative error of ``inverse(forward(x))`` against depth, in float32 and bfloat16."""

    def row(depth: int, x: Tensor) -> dict[str, float]:
        chain = InvertibleSequential(*couplings(depth, channels)).to(device)
        with torch.no_grad():
            out = {"float32": _rel(chain.inverse(chain(x)), x)}
            with torch.autocast(device.type, dtype=torch.bfloat16):
                out["bfloat16 autocast"] = _rel(chain.inverse(chain(x)).float(), x)
        return out

    return _per_depth(depths, row, channels=channels, size=size, device=device)


def _per_depth(
    depths: tuple[int, ...],
    row: Callable[[int, Tensor], dict[str, float]],
    *,
    channels: int,
    size: int,
    device: torch.device,
) -> pd.DataFrame:
    """A table indexed by ``depth``: ``row(depth, x)`` on one random ``1 x channels x size^3``."""
    x = torch.randn(1, channels, size, size, size, device=device)
    return pd.DataFrame([{"depth": d, **row(d, x)} for d in depths]).set_index("depth")


def _rel(a: Tensor, b: Tensor) -> float:
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def _plot(frame: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.4), dpi=110)
    for column, style in zip(frame.columns, ("o-", "s--", "^-")):
        ax.plot(frame.index, frame[column], style, label=column)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("couplings in the chain")
    ax.set_ylabel("activation memory per step (MiB)")
    ax.set_title("Engine: memory vs depth")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def run(
    *, quick: bool = False, output: Path = Path("docs/benchmarks.md"), device: str = "cpu"
) -> str:
    """Run the engine benchmark and write its section of ``output``; returns the markdown.

    Args:
        quick: smaller volumes and fewer repeats (a smoke run).
        output: the benchmarks page; the ``engine`` section is replaced, the rest kept.
        device: ``"cpu"`` or ``"cuda"``.
    """
    dev = torch.device(device)
    size, channels, depth = (16, 8, 8) if quick else (32, 16, 16)
    repeats = 2 if quick else 9
    with warnings.catch_warnings():  # memcnn's TypedStorage deprecation, on every step
        warnings.simplefilter("ignore", UserWarning)
        modes = compare_modes(
            depth=depth, channels=channels, size=size, device=dev, repeats=repeats
        )
    depths = (1, 4, 16) if quick else (1, 4, 16, 64)
    by_depth = memory_vs_depth(depths, channels=channels, size=size // 2, device=dev)
    drift = inverse_drift(
        (1, 16, 64, 256) if not quick else (1, 16), channels=channels, size=size // 2, device=dev
    )
    intro = (
        f"Device: {describe_device(dev)}; torch {torch.__version__}. "
        f"{depth} additive couplings (F, G = GroupNorm → LeakyReLU → 3³ conv on "
        f"{channels // 2} channels), input 1×{channels}×{size}³, one training step = "
        f"forward + backward of a mean-square loss; median of {repeats} steps after one "
        "warm-up, interleaved over the rows (CPU time of the process on CPU)."
        f"{' Quick run.' if quick else ''}"
    )
    plot = _plot_or_note(by_depth, output)
    sections = [_modes_section(modes), _depth_section(by_depth, plot), _drift_section(drift)]
    markdown = "\n".join(["## Engine", "", intro, ""] + [line for s in sections for line in s])
    if dev.type != "cuda":
        markdown += (
            "\n\nPeak CUDA memory and GPU step times: run `invseg bench engine --device cuda` "
            "on a GPU machine; no GPU was available for this run."
        )
    update_section(output, "engine", markdown)
    return markdown


def _modes_section(modes: pd.DataFrame) -> list[str]:
    """The table of :func:`compare_modes` and a paragraph reading it."""
    sac, offload = modes.loc["selective checkpoint (torch)"], modes.loc["save_on_cpu (torch)"]
    invert, store = modes.loc["invert"], modes.loc["store"]
    ckpt, anchored = modes.loc["checkpoint"], modes.loc["invert, anchor every block"]
    modes_md = modes.copy()
    modes_md["peak CUDA MiB"] = modes_md["peak CUDA MiB"].map(mib_or_dash)
    memcnn = (
        f"(memcnn's wrapper: {modes.loc['memcnn wrapper', 'time vs store']:.2f}×). "
        if "memcnn wrapper" in modes.index
        else "(memcnn not installed: no memcnn row). "
    )
    return [
        modes_md.to_markdown(floatfmt=".3g"),
        "",
        f"`invert` holds {invert['activation MiB'] / store['activation MiB']:.1%} of "
        f"`store`'s activations at {invert['time vs store']:.2f}× its step time "
        + memcnn
        + f"Selective checkpointing (conv outputs kept, the rest recomputed) holds "
        f"{sac['activation MiB'] / store['activation MiB']:.0%} at "
        f"{sac['time vs store']:.2f}×; `save_on_cpu` holds "
        f"{offload['activation MiB'] / store['activation MiB']:.0%} in device memory at "
        f"{offload['time vs store']:.2f}× (on a CPU nothing moves; on CUDA every saved "
        "tensor goes to pinned host memory and back, see the peak column). Both grow "
        "with depth; `invert` does not (below). Anchoring every block keeps what "
        f"`checkpoint` keeps ({anchored['activation MiB'] / store['activation MiB']:.0%} vs "
        f"{ckpt['activation MiB'] / store['activation MiB']:.0%}) at "
        f"{anchored['time vs store']:.2f}× instead of {ckpt['time vs store']:.2f}×: with each "
        "coupling's input kept and its output known, backward recomputes only the norm and "
        "activation before each conv and differentiates the convs without evaluating them.",
        "",
    ]


def _plot_or_note(by_depth: pd.DataFrame, output: Path) -> str:
    """Plot memory vs depth next to ``output``; the markdown image link (or why there is none)."""
    img = output.parent / "img" / "engine_memory_vs_depth.png"
    if not can_plot():
        return "(plot skipped: matplotlib is not installed)"
    _plot(by_depth, img)
    return f"![engine memory vs depth](img/{img.name})"


def _depth_section(by_depth: pd.DataFrame, plot: str) -> list[str]:
    """Activation memory against chain depth, as a table and a plot."""
    heading = "### Activation memory vs depth (MiB)"
    return [heading, "", by_depth.to_markdown(floatfmt=".3g"), "", plot, ""]


def _drift_section(drift: pd.DataFrame) -> list[str]:
    """How far ``inverse(forward(x))`` drifts from ``x``, with a word on bfloat16."""
    return [
        "### Numerical drift of the inverse",
        "",
        "Relative error ‖inverse(forward(x)) − x‖ / ‖x‖ of an untrained chain. In float32 it "
        "grows slowly with depth; under bfloat16 autocast each residual is rounded to 8 "
        "mantissa bits, so rebuilt inputs drift much more — use `anchor_every` or "
        "`drift_tol` (see the concepts page) for long bf16 chains.",
        "",
        drift.to_markdown(floatfmt=".2e"),
    ]


def mib_or_dash(value: float | None) -> str:
    """``None``/NaN as a dash, bytes as MiB."""
    return "–" if value is None or value != value else mib(int(value))
