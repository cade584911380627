"""invseg plan: per memory mode, the peak at an exact input, budgets, the CLI, GPU verification."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from invseg.cli import main
from invseg.commands import plan
from invseg.runtime.step_memory import measure_step_memory

GB = 10**9
CUBES = ["--cubes", "8", "12", "16"]
PARTS = ("param_bytes", "optimizer_bytes", "graph_bytes", "temporary_bytes", "overhead_bytes")


def _config(tmp_path: Path, target: str = "invseg.nets.PartiallyInvResUNet") -> Path:
    path = tmp_path / "cfg.yaml"
    model = {"_target_": target, "in_channels": 4, "out_channels": 3, "channels": [4, 8]}
    path.write_text(yaml.safe_dump({"model": model}))
    return path


def _plan(tmp_path: Path, **kwargs) -> dict:
    return json.loads(plan.run(_config(tmp_path), as_json=True, **kwargs))


def test_config_model_is_planned_in_every_memory_mode(tmp_path: Path) -> None:
    cands = plan.config_candidates(_config(tmp_path))
    assert [c.memory for c in cands] == ["store", "checkpoint", "invert"]
    assert cands[0].multiple == 2 and cands[0].in_channels == 4
    assert [c.build_fn((8, 8, 8)).memory for c in cands] == ["store", "checkpoint", "invert"]


def test_the_twin_is_planned_in_its_own_two_modes(tmp_path: Path) -> None:
    cands = plan.config_candidates(_config(tmp_path, "invseg.nets.UNet3D"))
    assert [c.memory for c in cands] == ["store", "checkpoint"]


def test_shape_prints_the_peak_and_its_parts_per_memory_mode(tmp_path: Path, capsys) -> None:
    cfg = str(_config(tmp_path))
    args = ["plan", cfg, "--shape", "24", "20", "15", "--target", "cpu", "--json", *CUBES]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {f"PartiallyInvResUNet:{m}" for m in ("store", "checkpoint", "invert")}
    for row in out.values():
        assert row["shape"] == [24, 20, 16] and row["batch"] == 1  # padded as the net pads
        assert row["peak_bytes"] == sum(row[k] for k in PARTS)
        assert row["target"] == "cpu" and row["overhead_bytes"] == 0
        assert row["measured_shapes"] == [[24, 20, 4], [24, 20, 8], [24, 20, 12]]
        assert "max_cube" not in row  # no budget asked for
    saved = {m: out[f"PartiallyInvResUNet:{m}"]["saved_bytes"] for m in ("store", "invert")}
    assert saved["invert"] < saved["store"]


def test_cpu_peak_at_a_shape_is_the_measured_peak_there(tmp_path: Path) -> None:
    row = _plan(tmp_path, shape=(24, 24, 24), target="cpu")["PartiallyInvResUNet:invert"]
    cand = plan.config_candidates(_config(tmp_path))[2]
    step = measure_step_memory(cand.build_fn((24, 24, 24)), 4, (24, 24, 24))
    planned = row["graph_bytes"] + row["temporary_bytes"]
    assert planned == pytest.approx(step.peak_bytes, rel=0.05)
    assert row["graph_bytes"] == pytest.approx(step.graph_bytes, rel=0.05)


def test_cuda_target_adds_the_overhead_and_no_cpu_temporaries(tmp_path: Path) -> None:
    rows = plan.run(
        _config(tmp_path, "invseg.nets.UNet3D"), shape=(16, 16, 16), target="cuda",
        as_json=True, cubes=(8, 12, 16),
    )  # fmt: skip
    row = json.loads(rows)["UNet3D:store"]
    assert row["temporary_bytes"] == 0 and row["overhead_bytes"] == 2**30
    assert row["peak_bytes"] == sum(row[k] for k in PARTS)
    assert row["measured_shapes"] == [[8] * 3, [12] * 3, [16] * 3] and "max_cube" not in row


def test_budget_prints_the_largest_cube_and_the_fov_batch(tmp_path: Path, capsys) -> None:
    cfg = str(_config(tmp_path, "invseg.nets.UNet3D"))
    assert main(["plan", cfg, "--budget", "1200MB", "--json", "--target", "cpu", *CUBES]) == 0
    out = json.loads(capsys.readouterr().out)
    for row in out.values():
        assert row["max_cube"] % 8 == 0 and row["max_cube_peak_bytes"] <= 1200 * 10**6
        assert row["fov"] == [240, 240, 156] and row["fov_batch"] >= 0
    assert out["UNet3D:checkpoint"]["max_cube"] >= out["UNet3D:store"]["max_cube"]
    assert main(["plan", cfg, "--budget", "1200MB", "--target", "cpu", *CUBES]) == 0
    assert "largest cube" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--budget", "lots"], "memory size"),
        (["--batch", "0"], "--batch"),
        (["--cubes", "8", "12", "15"], "multiples of 2"),
    ],
)
def test_plan_cli_rejects_bad_arguments(tmp_path: Path, capsys, args, message) -> None:
    assert main(["plan", str(_config(tmp_path)), *args]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_verification_agrees_with_the_prediction(tmp_path: Path) -> None:
    out = json.loads(
        plan.run(_config(tmp_path), budget="2GB", as_json=True, device="cuda", cubes=(32, 40, 48))
    )
    for row in out.values():
        assert row["verify"]["fits"], row
