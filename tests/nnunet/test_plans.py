"""invseg.nnunet.plans: the dataset folder, configurations, the architecture and the patch."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from invseg.nnunet import plans as nnplans
from tests.nnunet.plans_files import architecture, brats_plans, write_dataset

MiB = 2**20


def _voxel_peak(bytes_per_voxel: int = 1000):
    return lambda patch, batch: batch * math.prod(patch) * bytes_per_voxel


def _grows(plan: nnplans.PatchPlan, axis: int, multiples: tuple) -> list[int]:
    return [s + multiples[a] * (a == axis) for a, s in enumerate(plan.patch_size)]


def test_the_patch_grows_to_the_budget_keeping_divisibility_and_the_median_cap() -> None:
    peak, budget = _voxel_peak(), 2 * 160 * 192 * 160 * 1000
    median = [200, 240, 150]
    multiples = (32, 32, 16)  # a BraTS plan: the last stride [2, 2, 1]
    plan = nnplans.enlarge_patch([128, 128, 128], median, multiples=multiples, batch=2,
                                 budget_bytes=budget, peak=peak)  # fmt: skip
    assert plan.patch_size == (192, 192, 128)  # 144 on the third axis would pass the budget
    assert all(s % m == 0 for s, m in zip(plan.patch_size, multiples))
    assert plan.peak_bytes == peak(plan.patch_size, 2) <= budget
    assert plan.source_peak_bytes == peak([128, 128, 128], 2)
    caps = [192, 224, 144]
    for axis in range(3):  # no axis could grow one more step
        bigger = _grows(plan, axis, multiples)
        assert bigger[axis] > caps[axis] or peak(bigger, 2) > budget


def test_the_patch_is_never_made_smaller_nor_larger_than_the_median_allows() -> None:
    kwargs = {"multiples": (16, 16, 16), "batch": 2, "peak": _voxel_peak()}
    small = nnplans.enlarge_patch([64, 80, 48], [100, 90, 40], budget_bytes=1, **kwargs)
    assert small.patch_size == (64, 80, 48) and small.source_peak_bytes > 1
    large = nnplans.enlarge_patch([64, 80, 48], [100, 90, 40], budget_bytes=10**15, **kwargs)
    assert large.patch_size == (96, 80, 48)  # median rounded down; 48 > 40 is kept


def test_configurations_are_resolved_and_unknown_ones_named(tmp_path: Path) -> None:
    plans = brats_plans()
    cascade = nnplans.read_configuration(plans, "3d_cascade_fullres", tmp_path)
    fullres = plans["configurations"]["3d_fullres"]
    assert cascade == fullres | {"previous_stage": "3d_lowres"}
    with pytest.raises(ValueError, match=r"no configuration '3d_full'; available: 2d, "
                       r"3d_cascade_fullres, 3d_fullres, 3d_lowres"):  # fmt: skip
        nnplans.read_configuration(plans, "3d_full", tmp_path)


@pytest.mark.parametrize("model", ["partially", "fully"])
def test_the_architecture_names_the_invseg_class_and_keeps_nnunets_kwargs(model: str) -> None:
    source = architecture(6, [32, 64, 128, 256, 320, 320])
    arch = nnplans.invseg_architecture(source, model, "checkpoint")
    assert arch["network_class_name"] == nnplans.MODELS[model]
    own = {"anchor_every": None} if model == "partially" else {"lift": False}
    assert arch["arch_kwargs"] == source["arch_kwargs"] | {
        "memory": "checkpoint", "blocks": [1] * 6, **own
    }  # fmt: skip
    assert arch["_kw_requires_import"] == source["_kw_requires_import"]
    other = "fully" if model == "partially" else "partially"
    again = nnplans.invseg_architecture(arch, other, "invert")  # from invseg's own plans
    assert set(again["arch_kwargs"]) - set(source["arch_kwargs"]) == {
        "memory", "blocks", "lift" if other == "fully" else "anchor_every"
    }  # fmt: skip


def test_every_stage_and_stride_is_kept_and_prices_its_axis() -> None:
    configurations = brats_plans()["configurations"]
    for name, multiples in (("3d_fullres", (32, 32, 16)), ("3d_lowres", (4, 8, 8))):
        source = configurations[name]["architecture"]
        arch = nnplans.invseg_architecture(source, "fully", "invert")
        kept = {k: v for k, v in arch["arch_kwargs"].items() if k in source["arch_kwargs"]}
        assert kept == source["arch_kwargs"]  # BraTS's last [2, 2, 1], lowres's [1, 2, 2]
        assert nnplans.patch_multiples(arch["arch_kwargs"]) == multiples


@pytest.mark.parametrize(
    ("entry", "value", "message"),
    [
        ("strides", [[1, 1, 1], [2, 2, 2], [1, 1, 1]], r"strides\[2\] = \[1, 1, 1\]: "),
        ("strides", [[1, 2, 2], [2, 2, 2], [2, 2, 2]], r"strides\[0\] = \[1, 2, 2\]: "),
        ("kernel_sizes", [[1, 3, 3], [3, 3, 3], [3, 3, 3]], r"kernel_sizes\[0\] = \[1, 3, 3\]: "),
    ],
)
def test_what_the_nets_cannot_run_is_refused_naming_file_and_entry(
    tmp_path: Path, entry: str, value: list, message: str
) -> None:
    plans = brats_plans(fullres=architecture(3, [8, 16, 32]))
    plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"][entry] = value
    path = tmp_path / "nnUNetPlans.json"
    with pytest.raises(ValueError, match=rf"^{path} \(3d_fullres\): architecture\.arch_kwargs\."
                       + message):  # fmt: skip
        nnplans.invseg_plans(plans, "3d_fullres", model="partially", memory="invert",
                             budget_bytes=10**9, plans_name="P", path=path,
                             peak_fn=lambda a: _voxel_peak())  # fmt: skip


def test_the_new_plans_change_only_the_network_the_patch_and_the_name(tmp_path: Path) -> None:
    source = brats_plans(median=[200.0, 240.0, 150.0])
    new, old, patch = nnplans.invseg_plans(
        source, "3d_fullres", model="partially", memory="invert", budget_bytes=2 * 10**13,
        plans_name="nnUNetPlansInvseg", path=tmp_path, peak_fn=lambda a: _voxel_peak(),
    )  # fmt: skip
    assert old == source["configurations"]["3d_fullres"]
    assert new["plans_name"] == "nnUNetPlansInvseg" and source["plans_name"] == "nnUNetPlans"
    config = new["configurations"]["3d_fullres"]
    assert config["patch_size"] == list(patch.patch_size) == [192, 224, 144]  # median caps
    assert config["architecture"]["arch_kwargs"]["strides"][-1] == [2, 2, 1]  # kept
    changed = {k for k in config if config[k] != old[k]}
    assert changed == {"architecture", "patch_size"}  # data_identifier, spacing, batch kept
    unchanged = {k: v for k, v in new["configurations"].items() if k != "3d_fullres"}
    assert unchanged == {k: v for k, v in source["configurations"].items() if k != "3d_fullres"}


def test_the_dataset_folder_is_found_by_id_or_name(tmp_path: Path, monkeypatch) -> None:
    folder = write_dataset(tmp_path)
    write_dataset(tmp_path, name="Dataset001_Other")
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path))
    assert nnplans.dataset_folder(137) == folder == nnplans.dataset_folder("Dataset137_BraTS2021")
    assert nnplans.dataset_folder("1").name == "Dataset001_Other"
    with pytest.raises(ValueError, match=r"dataset 5: no folder starting with Dataset005 in"):
        nnplans.dataset_folder("5")
    with pytest.raises(ValueError, match="give an ID"):
        nnplans.dataset_folder("BraTS")
    write_dataset(tmp_path, name="Dataset001_Twin")
    with pytest.raises(ValueError, match=r"dataset 1: 2 folders \(Dataset001_Other, ...\)"):
        nnplans.dataset_folder(1)
    monkeypatch.delenv("nnUNet_preprocessed")
    with pytest.raises(ValueError, match="nnUNet_preprocessed is not set"):
        nnplans.dataset_folder(137)


def test_input_channels_and_heads_follow_nnunets_label_manager(tmp_path: Path) -> None:
    folder = write_dataset(tmp_path)
    assert nnplans.network_io(folder) == (4, 3)  # BraTS regions: WT, TC, ET
    labels = '{"channel_names": {"0": "T1", "1": "T2"}, "labels": {"background": 0, "CSF": 1, '
    (folder / "dataset.json").write_text(labels + '"GM": 2, "WM": 3, "ignore": 4}}')
    assert nnplans.network_io(folder) == (2, 4)  # iSeg labels with the background


def test_the_real_planner_prices_patches_and_batches_and_invert_costs_less() -> None:
    peaks = {}
    for memory in ("store", "invert"):
        arch = nnplans.invseg_architecture(architecture(2, [4, 8]), "partially", memory)
        peaks[memory] = nnplans.measure_peak(arch, 4, 3, cubes=(8, 12, 16))
    store, invert = peaks["store"], peaks["invert"]
    assert 0 < store([16, 16, 16], 1) < store([32, 32, 32], 1) < store([32, 32, 32], 2)
    assert invert([96, 96, 96], 2) < store([96, 96, 96], 2)
    grown = store([96, 96, 96], 2) - store([64, 64, 64], 2)  # linear in voxels
    per_voxel = (store([64, 64, 64], 2) - store([32, 32, 32], 2)) / (64**3 - 32**3)
    assert grown == pytest.approx(per_voxel * (96**3 - 64**3), rel=1e-3)


def test_measuring_a_plans_file_imports_nothing_it_names() -> None:
    """A plans file is data: op paths are read as names, the class is looked up, not imported."""
    import sys

    source = architecture(2, [4, 8])
    source["arch_kwargs"]["nonlin"] = "invseg_hostile_plans_module.LeakyReLU"
    arch = nnplans.invseg_architecture(source, "partially", "invert")
    net = nnplans.build_network(arch, 4, 3)
    assert type(net).__name__ == "PartiallyInvResNNUNet"
    assert "invseg_hostile_plans_module" not in sys.modules
    arch["network_class_name"] = "invseg_hostile_plans_module.Net"
    with pytest.raises(ValueError, match="is not an invseg class"):
        nnplans.build_network(arch, 4, 3)
    assert "invseg_hostile_plans_module" not in sys.modules
