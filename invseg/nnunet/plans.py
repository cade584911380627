r"""nnU-Net v2 plans that train an invseg net: what ``invseg nnunet plans`` writes.

From the ``nnUNetPlans.json`` that ``nnUNetv2_plan_and_preprocess`` wrote in
``$nnUNet_preprocessed/Dataset<ID>_<name>/``, :func:`invseg_plans` makes a copy whose
configuration (e.g. ``3d_fullres``) has

* ``architecture``: ``network_class_name`` an invseg class (:data:`MODELS`), nnU-Net's
  ``arch_kwargs`` kept as they are, every stage and stride (a BraTS plan's last ``[2, 2, 1]``
  and a thick-slice ``[1, 2, 2]`` included; checked by
  :func:`~invseg.nnunet.arch.net_options`, which names an entry the nets cannot run), plus
  invseg's ``memory`` and ``blocks``;
* ``patch_size`` enlarged by :func:`enlarge_patch` to what one training step at the
  configuration's ``batch_size`` fits in a memory budget, by invseg's planner
  (:func:`measure_peak`), each axis by the product of the strides on it
  (:func:`patch_multiples`);
* everything else unchanged: ``data_identifier`` (so the preprocessed data is shared and
  nothing is preprocessed again), spacing, normalisation, batch size. The configuration is
  written resolved (``inherits_from`` applied); ``plans_name`` is the new name.

Example:
    >>> enlarge_patch([64, 64, 64], [100, 80, 200], multiples=(16, 16, 8), batch=2,
    ...               budget_bytes=2 * 96 * 80 * 128, peak=lambda s, b: b * s[0] * s[1] * s[2])
    PatchPlan(patch_size=(96, 64, 160), peak_bytes=1966080, source_peak_bytes=524288)
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from invseg._choices import check_option
from invseg.engine import MEMORY_MODES
from invseg.nnunet.arch import check_strides, net_options
from invseg.nnunet.networks import FullyInvResNNUNet, PartiallyInvResNNUNet

__all__ = [
    "DEFAULT_PLANS_NAME",
    "MODELS",
    "PatchPlan",
    "build_network",
    "dataset_folder",
    "enlarge_patch",
    "invseg_architecture",
    "invseg_plans",
    "measure_peak",
    "network_io",
    "patch_multiples",
    "read_configuration",
]

SOURCE_PLANS = "nnUNetPlans"
DEFAULT_PLANS_NAME = "nnUNetPlansInvseg"
MODELS = {
    "partially": "invseg.nnunet.PartiallyInvResNNUNet",
    "fully": "invseg.nnunet.FullyInvResNNUNet",
}
OWN_DEFAULTS = {"partially": {"anchor_every": None}, "fully": {"lift": False}}
PeakFn = Callable[[Sequence[int], int], int]


def dataset_folder(dataset: str | int, preprocessed: str | Path | None = None) -> Path:
    """The folder of ``dataset`` (an ID or ``Dataset<ID>_<name>``) in ``nnUNet_preprocessed``.

    As nnU-Net's ``maybe_convert_to_dataset_name``: an ID names the folder starting with
    ``Dataset%03d`` (one, and only one).

    Raises:
        ValueError: no ``nnUNet_preprocessed``, a bad ID, no or several matching folders.
    """
    root = preprocessed or os.environ.get("nnUNet_preprocessed")
    if not root:
        raise ValueError(
            "nnUNet_preprocessed is not set: export nnUNet_preprocessed=/path/to/preprocessed "
            "(the folder nnUNetv2_plan_and_preprocess wrote)."
        )
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"nnUNet_preprocessed folder {root} does not exist.")
    name = str(dataset)
    if name.startswith("Dataset"):
        folder = root / name
        if not folder.is_dir():
            raise ValueError(f"dataset folder {folder} does not exist.")
        return folder
    try:
        prefix = f"Dataset{int(name):03d}"  # nnU-Net's "Dataset%03.0d"
        if int(name) < 0:
            raise ValueError
    except ValueError:
        raise ValueError(
            f"dataset {name!r}: give an ID (e.g. 137) or a folder name Dataset<ID>_<name>."
        ) from None
    found = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(prefix))
    if len(found) != 1:
        what = "no folder" if not found else f"{len(found)} folders ({found[0].name}, ...)"
        raise ValueError(f"dataset {name}: {what} starting with {prefix} in {root}.")
    return found[0]


def read_configuration(plans: dict, name: str, path: Path) -> dict:
    """Configuration ``name`` of ``plans`` with ``inherits_from`` resolved, as nnU-Net does.

    Raises:
        ValueError: an unknown configuration (naming the available ones), or a cycle.
    """
    configurations = plans.get("configurations")
    if not isinstance(configurations, dict) or name not in configurations:
        known = sorted(configurations) if isinstance(configurations, dict) else []
        raise ValueError(f"{path}: no configuration {name!r}; available: {', '.join(known)}.")
    chain = [name]
    while "inherits_from" in configurations[chain[-1]]:
        parent = configurations[chain[-1]]["inherits_from"]
        if parent in chain or parent not in configurations:
            raise ValueError(f"{path}: configuration {chain[-1]!r} inherits from {parent!r}.")
        chain.append(parent)
    resolved: dict = {}
    for link in reversed(chain):
        resolved |= copy.deepcopy(configurations[link])
    resolved.pop("inherits_from", None)
    return resolved


def patch_multiples(arch_kwargs: dict) -> tuple[int, int, int]:
    """What each patch axis must be a multiple of: the product of the plans' strides on it.

    Example:
        >>> patch_multiples({"n_stages": 4, "strides": [1, [1, 2, 2], 2, [2, 2, 1]]})
        (4, 8, 4)
    """
    strides = check_strides(arch_kwargs["strides"], int(arch_kwargs["n_stages"]))
    return tuple(math.prod(s[a] for s in strides) for a in range(3))  # type: ignore[return-value]


def invseg_architecture(architecture: dict, model: str, memory: str) -> dict:
    """``architecture`` with an invseg class and its keys; refuses what the nets cannot run.

    Raises:
        ValueError: an entry the nets cannot honour (named as ``architecture.arch_kwargs.X``).
    """
    model = check_option("model", model, MODELS)
    memory = check_option("memory", memory, MEMORY_MODES)
    kwargs = {k: v for k, v in architecture["arch_kwargs"].items() if k not in ("memory", "blocks")}
    for key in OWN_DEFAULTS["fully" if model == "partially" else "partially"]:
        kwargs.pop(key, None)  # the other model's own key
    options = net_options(**{k: v for k, v in kwargs.items() if k not in OWN_DEFAULTS[model]})
    own = {k: kwargs.get(k, v) for k, v in OWN_DEFAULTS[model].items()}
    return {
        "network_class_name": MODELS[model],
        "arch_kwargs": kwargs | {"memory": memory, "blocks": list(options["blocks"])} | own,
        "_kw_requires_import": list(architecture.get("_kw_requires_import", [])),
    }


def network_io(folder: Path) -> tuple[int, int]:
    """``(input channels, segmentation heads)`` from the dataset's ``dataset.json``.

    Heads as nnU-Net's ``LabelManager``: the foreground regions of a region-based dataset,
    else every label with the background (``ignore`` left out in both).
    """
    path = folder / "dataset.json"
    try:
        info = json.loads(path.read_text())
        channels = info.get("channel_names", info.get("modality"))
        labels = {k: v for k, v in info["labels"].items() if k != "ignore"}
    except (OSError, ValueError, KeyError, AttributeError) as err:
        raise ValueError(f"{path}: cannot read channel_names and labels ({err}).") from None
    regions = any(isinstance(v, list) and len(v) > 1 for v in labels.values())
    if regions:
        labels = {k: v for k, v in labels.items() if v not in (0, [0])}
    return len(channels), len(labels)


def build_network(architecture: dict, in_channels: int, num_classes: int) -> Any:
    """The network of ``architecture`` as nnU-Net's trainer builds it (deep supervision on).

    The plans file is data: its class is one of :data:`MODELS` (looked up, never imported by
    name), and its ops stay dotted names, which :func:`~invseg.nnunet.arch.net_options` reads
    as names.
    """
    classes = {MODELS["partially"]: PartiallyInvResNNUNet, MODELS["fully"]: FullyInvResNNUNet}
    name = architecture["network_class_name"]
    if name not in classes:
        raise ValueError(f"network_class_name {name!r} is not an invseg class: {sorted(classes)}")
    cls = classes[name]
    kwargs = dict(architecture["arch_kwargs"])
    net = cls(input_channels=in_channels, num_classes=num_classes, **kwargs, deep_supervision=True)
    net.apply(net.initialize)
    return net


def measure_peak(
    architecture: dict,
    in_channels: int,
    num_classes: int,
    *,
    device: str = "cpu",
    cubes: Sequence[int] | None = None,
) -> PeakFn:
    """``peak(patch, batch)``: the bytes of one nnU-Net training step on a GPU, by the planner.

    One step (deep supervision on, fp16 autocast as nnU-Net trains on CUDA; bf16, the same
    bytes, when measured on a CPU) is measured at three cubes
    (:func:`~invseg.runtime.planner.default_sizes` of the largest of :func:`patch_multiples`,
    so every axis divides, unless ``cubes``) and extrapolated in voxels
    (:func:`~invseg.runtime.planner.step_bytes`, CUDA target: weights, SGD momentum, graph and
    the CUDA overhead).
    """
    import torch

    from invseg.runtime.planner import default_sizes, fit_peak, param_bytes, step_bytes

    multiple = max(patch_multiples(architecture["arch_kwargs"]))
    amp = "fp16" if str(device).startswith("cuda") else "bf16"
    fit = fit_peak(
        lambda _: build_network(architecture, in_channels, num_classes), in_channels,
        sizes=cubes or default_sizes(max(multiple, 8)), amp=amp, device=device,
    )  # fmt: skip
    with torch.device("meta"):
        params = param_bytes(build_network(architecture, in_channels, num_classes))

    def peak(patch: Sequence[int], batch: int) -> int:
        return step_bytes(fit, params, patch, batch=batch, target="cuda")["peak_bytes"]

    return peak


@dataclass(frozen=True)
class PatchPlan:
    """The patch chosen for a budget, its peak bytes, and the peak of the source patch."""

    patch_size: tuple[int, ...]
    peak_bytes: int
    source_peak_bytes: int


def enlarge_patch(
    patch: Sequence[int],
    median: Sequence[int],
    *,
    multiples: Sequence[int],
    batch: int,
    budget_bytes: int,
    peak: PeakFn,
) -> PatchPlan:
    """The largest patch from ``patch`` up that fits ``budget_bytes`` at ``batch``.

    nnU-Net's patch search run upwards: while an axis can grow by its ``multiples`` entry
    (keeping the patch divisible by the product of the strides on that axis) without passing
    the median image size (nor shrinking below ``patch``), the axis that is smallest relative to
    the median grows, if the step still fits; an axis whose step does not fit stops. The patch
    is never made smaller than ``patch``, which nnU-Net sized for its own, larger-memory
    network.
    """
    size, step = [int(p) for p in patch], [int(m) for m in multiples]
    caps = [max(p, (int(m) // k) * k) for p, m, k in zip(size, median, step)]
    growing = [a for a in range(len(size)) if size[a] + step[a] <= caps[a]]
    while growing:
        axis = min(growing, key=lambda a: (size[a] / max(float(median[a]), 1.0), a))
        trial = [s + step[a] if a == axis else s for a, s in enumerate(size)]
        if peak(trial, batch) <= budget_bytes:
            size = trial
            if size[axis] + step[axis] <= caps[axis]:
                continue
        growing.remove(axis)
    return PatchPlan(tuple(size), peak(size, batch), peak([int(p) for p in patch], batch))


def invseg_plans(
    plans: dict,
    configuration: str,
    *,
    model: str,
    memory: str,
    budget_bytes: int,
    plans_name: str,
    path: Path,
    peak_fn: Callable[[dict], PeakFn],
) -> tuple[dict, dict, PatchPlan]:
    """The new plans, and the source and new configurations.

    Args:
        plans: the source plans (not changed).
        configuration: the configuration to give an invseg net (e.g. ``"3d_fullres"``).
        model: ``"partially"`` or ``"fully"``.
        memory: the net's memory mode.
        budget_bytes: memory for one training step at the configuration's batch size.
        plans_name: the new ``plans_name``.
        path: the source file (for messages).
        peak_fn: ``architecture -> peak(patch, batch)``, e.g. :func:`measure_peak` bound to
            the dataset's channels.

    Raises:
        ValueError: an unknown configuration, or an architecture the nets cannot run
            (``path (configuration): architecture.arch_kwargs.X = ...: ...``).
    """
    source = read_configuration(plans, configuration, path)
    try:
        architecture = invseg_architecture(source["architecture"], model, memory)
    except (ValueError, TypeError) as err:
        raise type(err)(f"{path} ({configuration}): {err}") from None
    except KeyError as err:
        raise ValueError(f"{path} ({configuration}): no {err} in the configuration.") from None
    patch = enlarge_patch(
        source["patch_size"], source.get("median_image_size_in_voxels", source["patch_size"]),
        multiples=patch_multiples(architecture["arch_kwargs"]), batch=int(source["batch_size"]),
        budget_bytes=budget_bytes, peak=peak_fn(architecture),
    )  # fmt: skip
    config = copy.deepcopy(source) | {"architecture": architecture}
    config["patch_size"] = list(patch.patch_size)
    new = copy.deepcopy(plans) | {"plans_name": plans_name}
    new["configurations"][configuration] = config
    return new, source, patch
