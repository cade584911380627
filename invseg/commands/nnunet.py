"""``invseg nnunet plans``: nnU-Net v2 plans that train an invseg net, with a larger patch.

Reads ``$nnUNet_preprocessed/Dataset<ID>_<name>/nnUNetPlans.json`` (after the user's
``nnUNetv2_plan_and_preprocess``), writes ``<PLANS_NAME>.json`` next to it with the
configuration's network replaced by an invseg class and its patch enlarged to what fits the
budget (:mod:`invseg.nnunet.plans`), and prints what changed and the ``nnUNetv2_train`` line.
The preprocessed data is shared with nnU-Net's plans: nothing is preprocessed again.

Example:
    After ``nnUNetv2_plan_and_preprocess -d 137``::

        invseg nnunet plans -d 137 --model partially --budget 12GB
        nnUNetv2_train 137 3d_fullres 0 -p nnUNetPlansInvseg
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "plans"]

GB = 1e9


def _plans_path(folder: Path, plans_name: str) -> Path:
    name = plans_name.removesuffix(".json")
    if not name or Path(name).name != name:
        raise ValueError(
            f"-o {plans_name!r}: give a plans name (e.g. nnUNetPlansInvseg), not a path."
        )
    return folder / f"{name}.json"


def _read(path: Path) -> dict:
    if not path.is_file():
        raise ValueError(
            f"plans file {path} does not exist; run nnUNetv2_plan_and_preprocess for this "
            "dataset first."
        )
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"plans file {path} cannot be read: {err}") from None


def plans(
    dataset: str | int,
    *,
    model: str,
    configuration: str = "3d_fullres",
    memory: str = "invert",
    budget: str = "12GB",
    plans_name: str | None = None,
    force: bool = False,
    device: str = "cpu",
    cubes: Sequence[int] | None = None,
    preprocessed: str | Path | None = None,
) -> str:
    """The ``invseg nnunet plans`` command: write the plans, return the text to print.

    Args:
        dataset: nnU-Net dataset ID or folder name (``Dataset137_BraTS2021``).
        model: ``"partially"`` or ``"fully"``.
        configuration: the configuration to change (``3d_fullres``).
        memory: the net's memory mode.
        budget: GPU memory for one training step at the configuration's batch size.
        plans_name: name of the new plans (default ``nnUNetPlansInvseg``).
        force: replace an existing plans file of that name.
        device: where the planner measures (``cpu`` or ``cuda``).
        cubes: the planner's three measurement cubes.
        preprocessed: nnU-Net's preprocessed folder (default ``$nnUNet_preprocessed``).

    Raises:
        ValueError: a missing folder or file, an unknown configuration, an architecture the
            nets cannot run, or an existing output without ``force`` (one line each).
    """
    from invseg.files import atomic_write_text
    from invseg.nnunet import plans as nnplans
    from invseg.runtime.planner import parse_bytes

    budget_bytes = parse_bytes(budget)
    folder = nnplans.dataset_folder(dataset, preprocessed)
    source_path = folder / f"{nnplans.SOURCE_PLANS}.json"
    out = _plans_path(folder, plans_name or nnplans.DEFAULT_PLANS_NAME)
    if out == source_path:
        raise ValueError(f"-o {out.stem} would overwrite nnU-Net's own plans; choose another name.")
    if out.exists() and not force:
        raise ValueError(f"{out} exists; pass --force to replace it.")
    source = _read(source_path)
    io = nnplans.network_io(folder)

    def peak_fn(architecture: dict) -> nnplans.PeakFn:
        return nnplans.measure_peak(architecture, *io, device=device, cubes=cubes)

    new, old, patch = nnplans.invseg_plans(
        source, configuration, model=model, memory=memory, budget_bytes=budget_bytes,
        plans_name=out.stem, path=source_path, peak_fn=peak_fn,
    )  # fmt: skip
    atomic_write_text(out, json.dumps(new, indent=4) + "\n")
    config = new["configurations"][configuration]
    return _report(dataset, configuration, old, config, patch, budget_bytes, (source_path, out))


def _patch_line(old: dict, patch: Any, batch: int, budget_bytes: int) -> str:
    source = list(old["patch_size"])
    if patch.source_peak_bytes > budget_bytes:
        return (
            f"patch    {source} kept at batch {batch}: {patch.source_peak_bytes / GB:.2f} GB, over "
            f"the {budget_bytes / GB:.2f} GB budget (never made smaller than nnU-Net's)"
        )
    size = f"{source} -> {list(patch.patch_size)}" if patch.patch_size != tuple(source) else source
    return (
        f"patch    {size} at batch {batch}: {patch.peak_bytes / GB:.2f} GB of the "
        f"{budget_bytes / GB:.2f} GB budget (nnU-Net's patch: {patch.source_peak_bytes / GB:.2f} "
        "GB; not above the median image size)"
    )


def _report(
    dataset: str | int,
    configuration: str,
    old: dict,
    config: dict,
    patch: Any,
    budget_bytes: int,
    paths: tuple[Path, Path],
) -> str:
    arch = config["architecture"]["arch_kwargs"]
    blocks = " ".join(str(b) for b in arch["blocks"])
    lines = [
        f"source   {paths[0]}, configuration {configuration}",
        f"network  {old['architecture']['network_class_name']} -> "
        f"{config['architecture']['network_class_name']} (memory {arch['memory']}, "
        f"blocks per level {blocks})",
        _patch_line(old, patch, config["batch_size"], budget_bytes),
        f"kept     data_identifier {config['data_identifier']} (the preprocessed data is "
        f"shared), spacing {config.get('spacing')}, batch_size {config['batch_size']}",
        f"wrote    {paths[1]}",
        f"nnUNetv2_train {dataset} {configuration} FOLD -p {paths[1].stem}",
    ]
    return "\n".join(lines) + "\n"


def _run(a: argparse.Namespace) -> int:
    print(plans(a.dataset, model=a.model, configuration=a.configuration, memory=a.memory,
                budget=a.budget, plans_name=a.output, force=a.force, device=a.device,
                cubes=a.cubes), end="")  # fmt: skip
    return 0


def add_parser(sub: Any) -> None:
    """Add ``nnunet plans`` to the ``invseg`` subcommands (``sub``: argparse subparsers)."""
    nnunet = sub.add_parser("nnunet", help="invseg nets inside nnU-Net v2").add_subparsers(
        dest="nnunet_command", required=True, metavar="COMMAND"
    )
    p = nnunet.add_parser(
        "plans", help="write nnU-Net plans that train an invseg net with the patch a budget fits"
    )
    p.add_argument("-d", "--dataset", required=True, help="dataset ID or Dataset<ID>_<name>")
    p.add_argument("-c", "--configuration", default="3d_fullres", help="default 3d_fullres")
    p.add_argument("--model", choices=["partially", "fully"], required=True)
    p.add_argument("--memory", choices=["invert", "checkpoint", "store"], default="invert")
    p.add_argument("--budget", default="12GB", help="GPU memory per training step (12GB)")
    p.add_argument("-o", "--output", default=None, metavar="PLANS_NAME",
                   help="name of the new plans (default nnUNetPlansInvseg)")  # fmt: skip
    p.add_argument("--force", action="store_true", help="replace existing plans of that name")
    p.add_argument("--device", default="cpu", help="where the planner measures: cpu or cuda")
    cubes = "the three cubes the planner measures (default by the strides: 64 96 128 at 32)"
    p.add_argument("--cubes", type=int, nargs=3, default=None, metavar="S", help=cubes)
    p.set_defaults(handler=_run)
