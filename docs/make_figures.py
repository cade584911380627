"""Regenerate the pictures of the docs site (``docs/figures/*.png``).

Every number in them is measured when this runs, on CPU, with :func:`invseg.engine.activation_bytes`
(exact bytes held for backward) and on data written by :func:`invseg.data.synthesize`:

* ``memory_vs_depth.png``: activation memory of one training forward of the Partially-InvRes
  U-Net against the number of invertible blocks per level (three memory modes), and of MoDL
  against the number of unrolls (``store`` vs ``invert``);
* ``brats_overlay.png``: a synthetic BraTS case (four modalities), its reference labels and the
  prediction of a small network trained for a few minutes by this script;
* ``iseg_overlay.png``: a synthetic iSeg subject (T1, T2) and its tissue labels;
* ``synth_easy_vs_hard.png``: one slice per modality of the ``easy`` and ``hard`` synthetic
  presets, BraTS and iSeg, with label outlines.

Run ``python docs/make_figures.py`` (a few minutes on 2 CPU cores) and commit the PNGs;
``--quick`` makes tiny versions for the tests.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
FIGURES = HERE / "figures"
BRATS_COLOURS = {1: (0.9, 0.2, 0.2), 2: (0.2, 0.8, 0.2), 4: (1.0, 0.85, 0.1)}
BRATS_NAMES = {1: "necrotic / non-enh. core (1)", 2: "oedema (2)", 4: "enhancing (4)"}
ISEG_COLOURS = {10: (0.2, 0.5, 1.0), 150: (0.9, 0.3, 0.3), 250: (0.95, 0.9, 0.3)}
ISEG_NAMES = {10: "CSF (10)", 150: "GM (150)", 250: "WM (250)"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _overlay(ax, image: np.ndarray, labels: np.ndarray | None, colours: dict, title: str) -> None:
    ax.imshow(image.T, cmap="gray", origin="lower")
    if labels is not None:
        rgba = np.zeros((*labels.T.shape, 4))
        for value, colour in colours.items():
            rgba[labels.T == value] = (*colour, 0.55)
        ax.imshow(rgba, origin="lower")
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def _save(fig, name: str, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    fig.savefig(path, dpi=80, bbox_inches="tight")
    _plt().close(fig)
    return path


def memory_vs_depth(out: Path, *, quick: bool = False) -> Path:
    """Activation MiB against blocks per level (U-Net) and unrolls (MoDL)."""
    from invseg.engine import activation_bytes
    from invseg.nets import PartiallyInvResUNet
    from invseg.recon import MoDL, SenseOperator
    from invseg.recon.simulate import birdcage_maps, poisson_disc_mask, shepp_logan

    size, depths, unrolls = (16, (1, 2), (2, 4)) if quick else (32, (1, 2, 4, 8), (2, 5, 10, 20))
    x = torch.randn(1, 4, size, size, size)
    seg: dict[str, list[float]] = {"store": [], "checkpoint": [], "invert": []}
    for blocks in depths:
        for memory in seg:
            torch.manual_seed(0)
            net = PartiallyInvResUNet(
                3,
                4,
                3,
                channels=(8, 16, 32),
                blocks=blocks,
                memory=memory,
                norm=("group", {"num_groups": 4}),
            )
            seg[memory].append(activation_bytes(lambda n=net: n(x).square().mean()) / 2**20)

    n = 32
    img = shepp_logan(n).to(torch.complex64)[None, None]
    op = SenseOperator(birdcage_maps(4, n)[None], poisson_disc_mask(n, 4.0, calib=6)[None, None])
    y = op.A(img)
    variants = {
        "store": {"memory": "store"},
        "invert (anchor every unroll)": {},
        "invert (auto anchors)": {"anchor_every": "auto"},
    }
    rec: dict[str, list[float]] = {name: [] for name in variants}
    for k in unrolls:
        for name, kw in variants.items():
            model = MoDL(num_unrolls=k, channels=16, layers=3, **kw)
            rec[name].append(
                activation_bytes(lambda m=model: (m(y, op) - img).abs().square().mean()) / 2**20
            )

    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    for memory, values in seg.items():
        a.plot(depths, values, "o-", label=memory)
    a.set(
        xlabel="invertible blocks per level",
        ylabel="activation memory (MiB)",
        title=f"Partially-InvRes U-Net, {size}³ input",
        xticks=list(depths),
    )
    a.legend(fontsize=8)
    for memory, values in rec.items():
        b.plot(unrolls, values, "o-", label=memory)
    b.set(
        xlabel="unrolls",
        ylabel="activation memory (MiB)",
        title=f"MoDL, {n}×{n}, 4 coils",
        xticks=list(unrolls),
    )
    b.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, "memory_vs_depth.png", out)


def brats_overlay(out: Path, work: Path, *, quick: bool = False) -> Path:
    """Four modalities, reference labels and a prediction of a briefly trained network."""
    import nibabel as nib

    from invseg.commands.predict import predict
    from invseg.commands.train import train
    from invseg.data import synthesize

    shape = (32, 32, 32) if quick else (64, 64, 64)
    info = synthesize("brats", work / "brats", cases=2 if quick else 6, shape=shape, seed=1)
    steps = 2 if quick else 300
    crop = list(shape) if quick else [48, 48, 48]
    run = train(
        {
            "data": {
                "root": str(info.root),
                "crop": crop,
                "val_cases": [info.cases[-1].case_id],
                "num_samples": 2,
            },
            "model": {
                "_target_": "invseg.nets.PartiallyInvResUNet",
                "in_channels": 4,
                "out_channels": 3,
                "channels": [8, 16, 32],
                "norm": ["group", {"num_groups": 4}],
            },
            "train": {
                "steps": steps,
                "lr": 3e-3,
                "num_workers": 0,
                "amp": False,
                "progress": False,
                "device": "cpu",
                "val_every_steps": 1000,
                "measure_memory": False,
            },
            "infer": {"roi_size": list(shape), "overlap": 0.25},
            "output": {"dir": str(work / "run")},
        }
    )
    case = info.cases[-1]  # held out from training
    pred_dir = work / "pred"
    predict(run / "last.pt", [case.images[0].parent], pred_dir, device="cpu")
    images = [np.asarray(nib.load(p).dataobj, dtype=np.float32) for p in case.images]
    label = np.asarray(nib.load(case.label).dataobj).astype(int)
    pred = np.asarray(nib.load(pred_dir / f"{case.case_id}.nii.gz").dataobj).astype(int)
    z = int(np.argmax((label > 0).sum(axis=(0, 1))))

    plt = _plt()
    fig, axes = plt.subplots(1, 6, figsize=(13, 2.6))
    for ax, img, name in zip(axes, images, info.modalities):
        _overlay(ax, img[:, :, z], None, {}, name)
    _overlay(axes[4], images[3][:, :, z], label[:, :, z], BRATS_COLOURS, "reference")
    _overlay(
        axes[5], images[3][:, :, z], pred[:, :, z], BRATS_COLOURS, f"prediction ({steps} steps)"
    )
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in BRATS_COLOURS.values()]
    fig.legend(handles, list(BRATS_NAMES.values()), loc="lower center", ncol=3, fontsize=8)
    fig.subplots_adjust(bottom=0.16)
    return _save(fig, "brats_overlay.png", out)


def iseg_overlay(out: Path, work: Path, *, quick: bool = False) -> Path:
    """T1, T2 and tissue labels of a synthetic iSeg subject (Analyze files)."""
    import nibabel as nib

    from invseg.data import synthesize

    shape = (32, 32, 32) if quick else (64, 64, 64)
    case = synthesize("iseg", work / "iseg", cases=1, shape=shape).cases[0]
    t1, t2 = (np.asarray(nib.load(p).dataobj, dtype=np.float32).squeeze() for p in case.images)
    label = np.asarray(nib.load(case.label).dataobj).astype(int).squeeze()
    z = shape[2] // 2
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(7, 2.6))
    _overlay(axes[0], t1[:, :, z], None, {}, "T1")
    _overlay(axes[1], t2[:, :, z], None, {}, "T2")
    _overlay(axes[2], t1[:, :, z], label[:, :, z], ISEG_COLOURS, "labels")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in ISEG_COLOURS.values()]
    fig.legend(handles, list(ISEG_NAMES.values()), loc="lower center", ncol=3, fontsize=8)
    fig.subplots_adjust(bottom=0.16)
    return _save(fig, "iseg_overlay.png", out)


def synth_easy_vs_hard(out: Path, work: Path, *, quick: bool = False) -> Path:
    """One slice per modality, easy vs hard preset, BraTS and iSeg, with label outlines."""
    from invseg.data import read_image, synthesize
    from invseg.data.synth import label_statistics

    shape = (32, 32, 32) if quick else (96, 112, 80)
    n = 2 if quick else 6
    rows = []
    for kind in ("brats", "iseg"):
        for preset in ("easy", "hard"):
            info = synthesize(
                kind, work / f"{kind}_{preset}", cases=n, shape=shape, seed=2, preset=preset
            )
            stats = label_statistics(info)
            pick = int(stats["lesions"].idxmax()) if kind == "brats" else 0
            case = info.cases[pick]
            images = [read_image(p)[0].astype(np.float32) for p in case.images]
            label = read_image(case.label)[0].astype(int)
            rows.append((f"{kind} {preset}", info.modalities, images, label))

    plt = _plt()
    fig, axes = plt.subplots(4, 4, figsize=(6.4, 7.2))
    outlines = {
        "brats": (((1, 2, 4), "lime"), ((1, 4), "red"), ((4,), "yellow")),
        "iseg": (((10,), "deepskyblue"), ((150,), "red"), ((250,), "yellow")),
    }
    for row, (title, modalities, images, label) in zip(axes, rows):
        kind = title.split()[0]
        tumour = (label > 0).sum(axis=(0, 1))
        z = int(np.argmax(tumour)) if kind == "brats" else label.shape[2] // 2
        for k, ax in enumerate(row):
            ax.axis("off")
            if k >= len(images):
                continue
            ax.imshow(images[k][:, :, z].T, cmap="gray", origin="lower")
            for values, colour in outlines[kind]:
                mask = np.isin(label[:, :, z], values).T.astype(float)
                if mask.any():
                    ax.contour(mask, levels=[0.5], colors=colour, linewidths=0.7)
            ax.set_title(f"{title}: {modalities[k]}", fontsize=7)
    handles = [
        plt.Line2D([0], [0], color=c, lw=1.5) for c in ("lime", "red", "yellow", "deepskyblue")
    ]
    names = ["WT / -", "TC / GM", "ET / WM", "- / CSF"]
    fig.legend(handles, names, loc="lower center", ncol=4, fontsize=8, title="BraTS / iSeg")
    fig.subplots_adjust(bottom=0.07, hspace=0.15, wspace=0.05)
    return _save(fig, "synth_easy_vs_hard.png", out)


def main(out: str | Path = FIGURES, *, quick: bool = False) -> list[Path]:
    """Write all figures into ``out`` and return their paths."""
    out = Path(out)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        return [
            memory_vs_depth(out, quick=quick),
            iseg_overlay(out, work, quick=quick),
            brats_overlay(out, work, quick=quick),
            synth_easy_vs_hard(out, work, quick=quick),
        ]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(FIGURES), help="output folder")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (for tests)")
    args = parser.parse_args()
    for path in main(args.out, quick=args.quick):
        print(f"{path} ({path.stat().st_size / 1024:.0f} kB)")
