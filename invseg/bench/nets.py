"""``invseg bench nets``: memory and speed of the segmentation networks, in one process.

Measures, on one input shared by every row (``1 x 4 x size^3``):

1. parameters, activation bytes held for backward by one training step (exact, via
   :func:`invseg.engine.activation_bytes`) and median step time (forward + backward) for
   UNet3D, PartiallyInvResUNet and FullyInvResUNet in each memory mode (also with the VAE
   branch), next to MONAI's SegResNet and SegResNetVAE at a similar parameter count;
2. activation bytes vs invertible blocks per level (1, 2, 4, 8) for each model, as a table and
   a PNG plot (``<output dir>/img/nets_memory_vs_blocks.png``);
3. on CUDA only: peak memory (``torch.cuda.max_memory_allocated``) per row and the largest cube
   edge trainable under a 12 GB cap (``torch.cuda.set_per_process_memory_fraction``).

The measured numbers are compared with the targets: Partially-InvRes <= 35% of its ``"store"``
twin, Fully-InvRes <= 10% and flat in depth (+5% from 1 to 8 blocks), both below SegResNetVAE,
and the ``"invert"`` step time <= 1.30x ``"store"``.
"""

from __future__ import annotations

import platform
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from invseg.bench import peers
from invseg.bench.harness import (
    Row,
    can_plot,
    describe_device,
    edge_text,
    largest_edge,
    measure,
    mib,
)
from invseg.bench.report import update_section, verdict, verdicts
from invseg.engine import activation_bytes
from invseg.nets import FullyInvResUNet, PartiallyInvResUNet, UNet3D
from invseg.nets.vae import vae_kwargs
from invseg.runtime.device import resolve_device
from invseg.runtime.plots import save_figure

__all__ = ["run"]

CHANNELS = (16, 32, 64, 128)
IN_CHANNELS, OUT_CHANNELS = 4, 3
BLOCKS = (1, 2, 4, 8)
CAP_BYTES = 12 * 2**30
TARGETS = {"partially": 0.35, "fully": 0.10, "flat": 1.05, "time": 1.30, "time_cuda": 1.25}
LIFT = "FullyInvResUNet (lift)"
ANCHORED = "invert, anchor_every=1"  # every block's input kept: no conv re-evaluated
#: ``(class, memory)`` of our nets in the depth sweep (``None``: the plain UNet3D twin).
SWEEP = (
    (UNet3D, None),
    (PartiallyInvResUNet, "invert"),
    (PartiallyInvResUNet, "store"),
    (FullyInvResUNet, "invert"),
    (FullyInvResUNet, "store"),
)
MEMORIES = ("store", "invert")  # the largest-cube rows of each invertible net


def _ours(
    cls: type,
    memory: str | None,
    size: int,
    *,
    blocks: int = 1,
    vae: bool = False,
    lift: bool = False,
    anchor_every: int | None = None,
):
    torch.manual_seed(0)
    kw: dict = {"channels": CHANNELS, "blocks": blocks, "vae": vae}
    if lift:
        kw["lift"] = True
    if anchor_every is not None:
        kw["anchor_every"] = anchor_every
    if memory is not None:
        kw["memory"] = memory
    return cls(3, IN_CHANNELS, OUT_CHANNELS, **vae_kwargs(kw, (size,) * 3))


def _lifted(memory: str, size: int, blocks: int) -> nn.Module:
    return _ours(FullyInvResUNet, memory, size, blocks=blocks, lift=True)


def _segresnet(init_filters: int, size: int, vae: bool) -> nn.Module:
    from monai.networks.nets import SegResNet, SegResNetVAE

    torch.manual_seed(0)
    kw = {"spatial_dims": 3, "init_filters": init_filters, "in_channels": IN_CHANNELS}
    if vae:
        return SegResNetVAE(input_image_size=(size,) * 3, out_channels=OUT_CHANNELS, **kw)
    return SegResNet(out_channels=OUT_CHANNELS, **kw)


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _matching_filters(target: int) -> int:
    """SegResNet ``init_filters`` (a multiple of 8, its group norm) closest to ``target`` params."""
    best, best_gap = 8, None
    for filters in range(8, 129, 8):
        gap = _params(_segresnet(filters, 16, False)) - target
        if best_gap is None or abs(gap) < best_gap:
            best, best_gap = filters, abs(gap)
        if gap > 0:  # parameters grow with filters: the next ones are further away
            break
    return best


def _loss(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Mean squared logits plus the VAE loss that a VAE net (ours, MONAI's) returns in training.

    MONAI's is unweighted: a constant weight would change neither bytes nor time.
    """
    out = model(x)
    logits, vae = out if isinstance(out, tuple) else (out, None)
    return logits.square().mean() + (vae if vae is not None else 0.0)


def _plot(sweep: dict[str, dict[int, int]], path: Path, size: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for label, values in sweep.items():
        style = "--" if "store" in label else "-"
        ax.plot(list(values), [v / 2**20 for v in values.values()], style, marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(BLOCKS), [str(b) for b in BLOCKS])
    ax.set_xlabel("blocks per level")
    ax.set_ylabel("activation MiB per training step")
    ax.set_title(f"Activation memory vs depth (1x{IN_CHANNELS}x{size}^3)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    save_figure(fig, path)
    plt.close(fig)


def _short(cls: type) -> str:
    """``"Partially"`` / ``"Fully"``: the depth table's name of an invertible net."""
    return cls.__name__.split("Inv")[0]


def run(
    *,
    quick: bool = False,
    output: Path = Path("docs/benchmarks.md"),
    device: str = "cpu",
    size: int | None = None,
) -> str:
    """Benchmark the segmentation networks and write the ``nets`` section of ``output``.

    Args:
        quick: smaller cube (16^3) and fewer timing repeats, for smoke tests.
        output: the benchmarks page (its ``nets`` section is replaced); the plot goes to
            ``<output dir>/img/nets_memory_vs_blocks.png``.
        device: ``"cpu"`` or ``"cuda"`` (peak memory and largest-cube numbers only on CUDA).
        size: cube edge of the input (a multiple of 8); default 128 on CUDA (64 with
            ``quick``), 32 on CPU (16 with ``quick``).

    Returns:
        The markdown written.

    Raises:
        ValueError: for an unknown device, CUDA requested without a GPU, or a bad ``size``.

    Example:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "benchmarks.md"
        >>> md = run(quick=True, output=out)  # doctest: +SKIP
    """
    dev, size = _check_args(device, size, quick)
    repeats = 2 if quick else 9
    x = torch.randn(1, IN_CHANNELS, size, size, size, device=dev)
    configs, filters = _contenders(size)
    rows = measure(configs, _loss, x, repeats)
    sweep = _depth_sweep(size, dev, x)
    lines = _intro(dev, size, repeats)
    lines += _step_table(rows, dev)
    lines += _sweep_table(sweep, _plot_or_note(sweep, Path(output), size))
    lines += _targets(rows, sweep, filters, dev)
    markdown = "\n".join(lines) + "\n"
    update_section(Path(output), "nets", markdown)
    if dev.type == "cuda":  # pragma: no cover - needs a GPU
        # written again with the search: a search cut short still leaves the tables above
        markdown += "\n".join(_largest_cubes(dev, quick, filters)) + "\n"
        update_section(Path(output), "nets", markdown)
    return markdown


def _check_args(device: str, size: int | None, quick: bool) -> tuple[torch.device, int]:
    """The checked device and the cube edge (its default depends on the device)."""
    dev = resolve_device(device)
    if size is None:
        size = (64 if quick else 128) if dev.type == "cuda" else (16 if quick else 32)
    if not isinstance(size, int) or size < 8 or size % 8:
        raise ValueError(f"size must be a multiple of 8 (4 levels), >= 8; got {size!r}.")
    return dev, size


def _contenders(size: int) -> tuple[list[tuple[str, str, nn.Module]], int]:
    """The ``(name, memory, model)`` rows of the step table and SegResNet's ``init_filters``."""
    configs: list[tuple[str, str, nn.Module]] = [("UNet3D", "store", _ours(UNet3D, None, size))]
    for cls in (PartiallyInvResUNet, FullyInvResUNet):
        for memory in ("invert", "checkpoint", "store"):
            configs.append((cls.__name__, memory, _ours(cls, memory, size)))
        if cls is PartiallyInvResUNet:
            model = _ours(cls, "invert", size, anchor_every=1)
            configs.append((cls.__name__, ANCHORED, model))
    for memory in ("invert", "store"):
        configs.append((LIFT, memory, _lifted(memory, size, 1)))
    for cls in (PartiallyInvResUNet, FullyInvResUNet):
        for memory in ("invert", "store"):
            configs.append((f"{cls.__name__}+VAE", memory, _ours(cls, memory, size, vae=True)))
    filters = _matching_filters(_params(configs[1][2]))
    for vae, name in ((False, "SegResNet"), (True, "SegResNetVAE")):
        model = _segresnet(filters, size, vae)
        configs.append((f"{name} (init_filters={filters})", "store", model))
    configs += peers.unet_peers(configs[0][2], CHANNELS, IN_CHANNELS, OUT_CHANNELS)
    return configs, filters


def _depth_sweep(size: int, dev: torch.device, x: torch.Tensor) -> dict[str, dict[int, int]]:
    """Activation bytes per :data:`BLOCKS` entry, for each row of the depth table."""
    makers: dict[str, Callable[[int], nn.Module]] = {}
    for cls, memory in SWEEP:
        label = "UNet3D" if memory is None else f"{_short(cls)} {memory}"
        makers[label] = lambda b, c=cls, m=memory: _ours(c, m, size, blocks=b)
    for memory in ("invert", "store"):
        makers[f"Fully (lift) {memory}"] = lambda b, m=memory: _lifted(m, size, b)
    makers["UNet3D ckpt per level"] = lambda b: _ours(UNet3D, "checkpoint", size, blocks=b)
    makers["UNet3D selective"] = lambda b: peers.SelectiveCheckpoint(
        _ours(UNet3D, None, size, blocks=b)
    )
    return {
        label: {b: activation_bytes(_loss, make(b).to(dev).train(), x) for b in BLOCKS}
        for label, make in makers.items()
    }


def _plot_or_note(sweep: dict[str, dict[int, int]], output: Path, size: int) -> str:
    """Plot the depth sweep next to ``output``; the markdown image link (or why there is none)."""
    img = output.parent / "img" / "nets_memory_vs_blocks.png"
    if not can_plot():
        return "(plot skipped: matplotlib is not installed)"
    _plot(sweep, img, size)
    return f"![activation memory vs blocks](img/{img.name})"


def _intro(dev: torch.device, size: int, repeats: int) -> list[str]:
    """The section title and the paragraph saying what was measured, and how."""
    lines = [
        "## Segmentation networks (`invseg bench nets`)",
        "",
        f"Input `1x{IN_CHANNELS}x{size}^3`, channels {CHANNELS}, {OUT_CHANNELS} outputs, 1 block "
        f"per level unless stated; device: {describe_device(dev)}; torch {torch.__version__}, "
        f"Python {platform.python_version()}. Activation bytes are exact (tensors saved for "
        "backward by one training step, each storage once, parameters excluded; the input "
        "volume counts). Step time: median of "
        f"{repeats} forward+backward steps after one warm-up, interleaved over the rows "
        f"({'wall time' if dev.type == 'cuda' else 'CPU time of the process'}).",
    ]
    if dev.type == "cpu":
        lines += [
            "",
            f"No GPU in this run: a {size}^3 cube on CPU (128^3 is the GPU default). Activation "
            "bytes scale with the number of voxels, so the ratios hold at any size; peak CUDA "
            "memory and the largest trainable cube are measured only with `--device cuda`.",
        ]
    return lines


def _step_table(rows: list[Row], dev: torch.device) -> list[str]:
    """Parameters, activation MiB and step time per row (vs its store twin), then the peers."""
    cuda = dev.type == "cuda"
    by = {(r.name, r.memory): r for r in rows}
    lines = [
        "",
        "| model | memory | params | activation MiB | vs store twin | step s | step vs store |"
        + (" peak CUDA MiB |" if cuda else ""),
        "|---|---|---|---|---|---|---|" + ("---|" if cuda else ""),
    ]
    for r in rows:
        twin = by.get((r.name, "store"))
        rel = f"{r.act_bytes / twin.act_bytes:.1%}" if twin and r.memory != "store" else "–"
        trel = f"{r.step_s / twin.step_s:.2f}x" if twin and r.memory != "store" else "–"
        line = (
            f"| {r.name} | {r.memory} | {r.params / 1e6:.2f} M | {mib(r.act_bytes, 1)} | {rel} | "
            f"{r.step_s:.3f} | {trel} |"
        )
        lines.append(line + (f" {mib(r.peak_bytes, 1)} |" if cuda else ""))
    ours = [(n, "invert") for n in ("PartiallyInvResUNet", "FullyInvResUNet")]
    return [*lines, "", peers.summary(rows, twin=("UNet3D", "store"), ours=ours)]


def _sweep_table(sweep: dict[str, dict[int, int]], plot: str) -> list[str]:
    """The activation-vs-depth table and its plot."""
    lines = [
        "",
        "### Activation MiB vs blocks per level",
        "",
        "| model | " + " | ".join(f"{b} block{'s' if b > 1 else ''}" for b in BLOCKS) + " |",
        "|---|" + "---|" * len(BLOCKS),
    ]
    for label, values in sweep.items():
        lines.append(f"| {label} | " + " | ".join(mib(v, 1) for v in values.values()) + " |")
    return [*lines, "", plot, ""]


def _targets(
    rows: list[Row], sweep: dict[str, dict[int, int]], filters: int, dev: torch.device
) -> list[str]:
    """The targets table (measured value and verdict per target) and the note on the floor."""
    by = {(r.name, r.memory): r for r in rows}

    def ratio(name: str, key: str = "act_bytes") -> float:
        return getattr(by[(name, "invert")], key) / getattr(by[(name, "store")], key)

    p_ratio, f_ratio = ratio("PartiallyInvResUNet"), ratio("FullyInvResUNet")
    f_sweep = [sweep["Fully invert"][b] / sweep["Fully store"][b] for b in BLOCKS]
    l_sweep = [sweep["Fully (lift) invert"][b] / sweep["Fully (lift) store"][b] for b in BLOCKS]
    flat = max(sweep["Fully invert"].values()) / min(sweep["Fully invert"].values())
    srv = by[(f"SegResNetVAE (init_filters={filters})", "store")]
    p_vae, f_vae = by[("PartiallyInvResUNet+VAE", "invert")], by[("FullyInvResUNet+VAE", "invert")]
    t_p, t_f = ratio("PartiallyInvResUNet", "step_s"), ratio("FullyInvResUNet", "step_s")
    t_l = ratio(LIFT, "step_s")
    t_max = TARGETS["time_cuda" if dev.type == "cuda" else "time"]
    return [
        "### Targets",
        "",
        "| target | measured | verdict |",
        "|---|---|---|",
        f"| Partially-InvRes invert <= 35% of store twin | {p_ratio:.1%} | "
        f"{verdict(p_ratio <= TARGETS['partially'])} |",
        "| Fully-InvRes invert <= 10% of store twin (1 / 2 / 4 / 8 blocks) | "
        + " / ".join(f"{r:.1%}" for r in f_sweep)
        + f" | {verdict(f_ratio <= TARGETS['fully'])} at 1 block"
        + (", met from 2 blocks" if f_ratio > TARGETS["fully"] and f_sweep[1] <= 0.10 else "")
        + " |",
        "| Fully-InvRes `lift=True` invert <= 10% of store twin (1 / 2 / 4 / 8 blocks) | "
        + " / ".join(f"{r:.1%}" for r in l_sweep)
        + f" | {verdict(l_sweep[0] <= TARGETS['fully'])} at 1 block |",
        f"| Fully-InvRes flat from 1 to 8 blocks (<= +5%) | +{flat - 1:.1%} | "
        f"{verdict(flat <= TARGETS['flat'])} |",
        f"| below SegResNetVAE ({srv.params / 1e6:.2f} M params, {mib(srv.act_bytes, 1)} MiB), "
        f"both with VAE, invert | Partially {mib(p_vae.act_bytes, 1)} MiB "
        f"({p_vae.params / 1e6:.2f} M), Fully {mib(f_vae.act_bytes, 1)} MiB "
        f"({f_vae.params / 1e6:.2f} M) | "
        f"{verdict(max(p_vae.act_bytes, f_vae.act_bytes) < srv.act_bytes)} |",
        f"| invert step time <= {t_max:.2f}x store ({dev.type}) | Partially {t_p:.2f}x, "
        f"Fully {t_f:.2f}x, Fully (lift) {t_l:.2f}x | "
        f"{verdicts({'Partially': t_p, 'Fully': t_f, 'Fully (lift)': t_l}, t_max)} |",
        "",
        f"Fully-InvRes in `invert` mode holds only the input volume (saved by the stem conv, "
        f"{IN_CHANNELS} channels), the body output ({CHANNELS[0]} channels, saved once for the "
        f"engine and the head) and the logits (saved by the loss, {OUT_CHANNELS} channels), "
        "whatever the depth: that floor is why the ratio can exceed 10% with 1 block per "
        "level while the store twin is still shallow. With `lift=True` the stem is a fixed "
        "isometry (nothing saved), the head a strided view of the body output and the body "
        f"ends with a learnable orthogonal 1x1 mixing: only the body output ({CHANNELS[0]} "
        "channels) is held.",
    ]


def _largest_cubes(
    dev: torch.device, quick: bool, filters: int
) -> list[str]:  # pragma: no cover - needs a GPU
    """The largest trainable cube of our nets and SegResNet under the 12 GB cap.

    Each model's search stops after a time budget (8 s with ``quick``, 60 s otherwise), so the
    whole suite fits ``make gpu-check``'s limit; a cut search is reported as ``>= edge``.
    """
    edges = tuple(range(64, 513, 64 if quick else 32))
    cap = {"channels": IN_CHANNELS, "cap_bytes": CAP_BYTES, "budget_s": 8.0 if quick else 60.0}
    lines = [
        "",
        "### Largest trainable cube under a 12 GB cap (CUDA)",
        "",
        "| model | memory | largest edge |",
        "|---|---|---|",
    ]
    ours = [(UNet3D, None)] + [
        (cls, memory) for cls in (PartiallyInvResUNet, FullyInvResUNet) for memory in MEMORIES
    ]
    for cls, memory in ours:
        found = largest_edge(lambda c=cls, m=memory: _ours(c, m, 8), _loss, dev, edges, **cap)
        lines.append(f"| {cls.__name__} | {memory or 'store'} | {edge_text(*found)} |")
    found = largest_edge(lambda: _segresnet(filters, 8, False), _loss, dev, edges, **cap)
    lines.append(f"| SegResNet (init_filters={filters}) | store | {edge_text(*found)} |")
    return lines
