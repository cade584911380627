"""invseg plan: per memory mode, zoo peers, the budget table, the CLI and (GPU) verification."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from invseg.bench import plan
from invseg.cli import main

GB = 10**9


def _config(tmp_path: Path, target: str = "invseg.nets.PartiallyInvResUNet") -> Path:
    path = tmp_path / "cfg.yaml"
    model = {"_target_": target, "in_channels": 4, "out_channels": 3, "channels": [4, 8]}
    path.write_text(yaml.safe_dump({"model": model}))
    return path


def test_config_model_is_planned_in_every_memory_mode(tmp_path: Path) -> None:
    cands = plan.config_candidates(_config(tmp_path))
    assert [c.memory for c in cands] == ["store", "checkpoint", "invert"]
    assert cands[0].multiple == 2 and cands[0].in_channels == 4
    rows = plan.plan_table(cands, [int(1.2 * GB)])
    cubes = {r["memory"]: r["max_cube"] for r in rows}
    assert cubes["store"] < cubes["checkpoint"] <= cubes["invert"]
    acts = {r["memory"]: r["fov_activation_bytes"] for r in rows}
    assert acts["invert"] < acts["checkpoint"] < acts["store"]
    for r in rows:
        assert r["total_bytes"] <= int(1.2 * GB) and r["extrapolation_error"] < 0.05
        assert r["fov"] == [240, 240, 156]  # padded to the net's multiple of 2


def test_the_twin_is_planned_in_its_own_two_modes(tmp_path: Path) -> None:
    cands = plan.config_candidates(_config(tmp_path, "invseg.nets.UNet3D"))
    assert [c.memory for c in cands] == ["store", "checkpoint"]
    assert [c.build_fn(16).memory for c in cands] == ["store", "checkpoint"]


def test_budget_table_marks_what_trains_at_full_field_of_view(tmp_path: Path) -> None:
    cands = plan.config_candidates(_config(tmp_path))[::2]  # store and invert
    rows = plan.plan_table(cands, [2 * GB, 8 * GB])
    small = {r["memory"]: r for r in rows if r["budget_bytes"] == 2 * GB}
    large = {r["memory"]: r for r in rows if r["budget_bytes"] == 8 * GB}
    assert large["invert"]["fov_batch"] >= small["invert"]["fov_batch"] >= 1
    assert large["store"]["max_cube"] > small["store"]["max_cube"]
    md = plan.table_markdown(rows)
    assert "2 GB: cube / FOV batch" in md and "| PartiallyInvResUNet | invert |" in md


def test_plan_cli_prints_json_per_memory_mode(tmp_path: Path, capsys) -> None:
    assert main(["plan", str(_config(tmp_path)), "--budget", "1200MB", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {f"PartiallyInvResUNet:{m}" for m in ("store", "checkpoint", "invert")}
    for entry in out.values():
        assert {"max_cube", "activation_bytes", "total_bytes"} <= set(entry)
        assert entry["total_bytes"] <= 1200 * 10**6


def test_plan_cli_rejects_a_bad_budget(tmp_path: Path, capsys) -> None:
    assert main(["plan", str(_config(tmp_path)), "--budget", "lots"]) == 2
    assert "memory size" in capsys.readouterr().err


def test_zoo_peers_join_the_plan() -> None:
    cands = plan.zoo_candidates(["monai_unet"], base=4, arch_crop=32)
    rows = plan.plan_table(cands, [int(1.2 * GB)])
    assert rows[0]["model"] == "monai_unet" and rows[0]["max_cube"] % 8 == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_verification_agrees_with_the_prediction(tmp_path: Path) -> None:
    cand = plan.config_candidates(_config(tmp_path))[0]
    row = plan.plan_table([cand], [2 * GB], device="cuda")[0]
    result = plan.verify_cuda(cand, row["max_cube"], 2 * GB)
    assert result["fits"]


def test_bench_plan_writes_the_budget_section(tmp_path: Path) -> None:
    page = tmp_path / "benchmarks.md"
    page.write_text("# Benchmarks\n")
    md = plan.docs_section(output=page, models=["monai_unet"], base=4)
    text = page.read_text()
    assert "<!-- bench:plan -->" in text and md.strip() in text
    assert "| monai_unet | store |" in md and "80 GB: cube / FOV batch" in md
    assert "4 channels at its first level" in md
