"""``invseg nnunet plans``: the written plans, what it prints, its one-line errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from invseg.cli import build_parser, main
from invseg.nnunet import plans as nnplans
from tests.nnunet.plans_files import brats_plans, write_dataset

GB = 10**9


@pytest.fixture
def dataset(tmp_path: Path, monkeypatch) -> Path:
    """A BraTS-like preprocessed folder; the planner priced at 1 kB a voxel (no measuring)."""
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path))

    def measure(architecture, in_channels, num_classes, **kwargs):
        assert (in_channels, num_classes) == (4, 3)  # from dataset.json
        return lambda patch, batch: batch * math.prod(patch) * 1000 + 2 * GB

    monkeypatch.setattr(nnplans, "measure_peak", measure)
    return write_dataset(tmp_path, brats_plans(median=[200.0, 240.0, 150.0]))


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    status = main(["nnunet", "plans", *argv])
    out = capsys.readouterr()
    return status, out.out, out.err


def test_writes_the_invseg_plans_and_prints_what_changed_and_the_train_line(dataset, capsys):
    status, out, err = _run(capsys, "-d", "137", "--model", "partially", "--budget", "12GB")
    assert (status, err) == (0, "")
    written = json.loads((dataset / "nnUNetPlansInvseg.json").read_text())
    source = json.loads((dataset / "nnUNetPlans.json").read_text())
    assert source == brats_plans(median=[200.0, 240.0, 150.0])  # the source is left alone
    assert written["plans_name"] == "nnUNetPlansInvseg"
    config, old = written["configurations"]["3d_fullres"], source["configurations"]["3d_fullres"]
    arch = config["architecture"]
    assert arch["network_class_name"] == "invseg.nnunet.PartiallyInvResNNUNet"
    assert arch["arch_kwargs"]["memory"] == "invert" and arch["arch_kwargs"]["blocks"] == [1] * 6
    assert arch["arch_kwargs"]["strides"] == old["architecture"]["arch_kwargs"]["strides"]
    assert config["data_identifier"] == old["data_identifier"] == "nnUNetPlans_3d_fullres"
    assert (config["spacing"], config["batch_size"]) == (old["spacing"], 2)
    # all 6 stages, strides[5] = [2, 2, 1] too: multiples of (32, 32, 16), capped by the median
    patch, caps, multiples = config["patch_size"], [192, 224, 144], [32, 32, 16]
    for p, q, c, m in zip(patch, old["patch_size"], caps, multiples):
        assert p % m == 0 and q <= p <= c
    peak = 2 * math.prod(patch) * 1000 + 2 * GB  # batch 2 at 1 kB a voxel, 2 GB fixed
    assert peak <= 12 * GB
    for axis in range(3):  # no axis could grow one more step within its cap and the budget
        step = math.prod(patch) // patch[axis] * multiples[axis]
        assert patch[axis] + multiples[axis] > caps[axis] or peak + 2 * step * 1000 > 12 * GB
    lines = out.splitlines()
    assert lines[0] == f"source   {dataset / 'nnUNetPlans.json'}, configuration 3d_fullres"
    assert "PlainConvUNet -> invseg.nnunet.PartiallyInvResNNUNet (memory invert" in lines[1]
    assert lines[2].startswith(
        f"patch    [128, 160, 112] -> {patch} at batch 2: {peak / GB:.2f} GB"
    )
    assert "data_identifier nnUNetPlans_3d_fullres" in lines[3]
    assert lines[-1] == "nnUNetv2_train 137 3d_fullres FOLD -p nnUNetPlansInvseg"


def test_fully_and_an_anisotropic_configuration_train_with_nnunets_own_trainer(dataset, capsys):
    status, out, _ = _run(capsys, "-d", "Dataset137_BraTS2021", "--model", "fully", "-c",
                          "3d_lowres", "--memory", "checkpoint", "-o", "Fully.json")  # fmt: skip
    assert status == 0
    written = json.loads((dataset / "Fully.json").read_text())
    arch = written["configurations"]["3d_lowres"]["architecture"]
    assert arch["network_class_name"] == "invseg.nnunet.FullyInvResNNUNet"
    assert arch["arch_kwargs"]["memory"] == "checkpoint" and arch["arch_kwargs"]["lift"] is False
    assert arch["arch_kwargs"]["strides"] == [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]]
    assert out.splitlines()[-1] == "nnUNetv2_train Dataset137_BraTS2021 3d_lowres FOLD -p Fully"


def test_a_budget_below_nnunets_patch_keeps_it_and_says_so(dataset, capsys) -> None:
    status, out, _ = _run(capsys, "-d", "137", "--model", "partially", "--budget", "3GB")
    assert status == 0
    written = json.loads((dataset / "nnUNetPlansInvseg.json").read_text())
    assert written["configurations"]["3d_fullres"]["patch_size"] == [128, 160, 112]
    assert "patch    [128, 160, 112] kept at batch 2: 6.59 GB, over the 3.00 GB budget" in out


def test_existing_plans_are_replaced_only_with_force(dataset, capsys) -> None:
    (dataset / "nnUNetPlansInvseg.json").write_text("{}")
    status, _, err = _run(capsys, "-d", "137", "--model", "partially")
    assert status == 2
    target = dataset / "nnUNetPlansInvseg.json"
    assert err == f"invseg: error: {target} exists; pass --force to replace it.\n"
    assert (dataset / "nnUNetPlansInvseg.json").read_text() == "{}"
    assert _run(capsys, "-d", "137", "--model", "partially", "--force")[0] == 0
    assert json.loads((dataset / "nnUNetPlansInvseg.json").read_text())["plans_name"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-d", "138"], "dataset 138: no folder starting with Dataset138 in "),
        (["-d", "137", "-c", "3d_full"], "no configuration '3d_full'; available: 2d, "),
        (["-d", "137", "-c", "2d"], "(2d): architecture.arch_kwargs.conv_op = 'Conv2d'"),
        (["-d", "137", "-o", "nnUNetPlans"], "-o nnUNetPlans would overwrite nnU-Net's own"),
        (["-d", "137", "-o", "a/b"], "-o 'a/b': give a plans name"),
        (["-d", "137", "--budget", "lots"], "memory size must look like 12GB"),
    ],
)  # fmt: skip
def test_user_errors_are_one_line_and_exit_2(dataset, capsys, argv, message) -> None:
    status, out, err = _run(capsys, *argv, "--model", "partially")
    assert status == 2 and out == ""
    assert err.startswith("invseg: error: ") and err.count("\n") == 1
    assert message in err
    assert not (dataset / "nnUNetPlansInvseg.json").exists()


def test_a_missing_plans_file_is_named(dataset, capsys) -> None:
    (dataset / "nnUNetPlans.json").unlink()
    status, _, err = _run(capsys, "-d", "137", "--model", "fully")
    assert status == 2
    assert f"plans file {dataset / 'nnUNetPlans.json'} does not exist; run " in err


def test_the_subcommand_has_help() -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["nnunet", "plans", "--help"])
    assert exit_info.value.code == 0
