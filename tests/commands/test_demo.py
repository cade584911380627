"""The demo: synthesise -> train -> predict -> evaluate, plus its bundled config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from invseg.commands.demo import demo
from invseg.runtime.config import PACKAGED, find_config
from invseg.tasks.config import load_config, load_recon_config

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")))
def test_repo_configs_are_links_to_the_packaged_ones(path: Path) -> None:
    assert path.is_symlink() and path.resolve() == (PACKAGED / path.name).resolve()
    assert find_config(path.stem) == PACKAGED / path.name


def test_packaged_recon_configs_load_by_name() -> None:
    assert load_recon_config("recon_cine").data.kind == "cine"


@pytest.mark.parametrize(
    "name", ["brats_partially_invres", "brats_fully_invres", "iseg_partially_invres", "demo"]
)
def test_shipped_configs_validate(name: str) -> None:
    cfg = load_config(REPO / "configs" / f"{name}.yaml")
    assert cfg["model"]["_target_"].startswith("invseg.nets.")


@pytest.mark.slow
def test_demo_end_to_end_writes_predictions_table_and_overlay(tmp_path: Path) -> None:
    result = demo(tmp_path / "demo", cases=4, minutes=0.02, seed=1)
    out = tmp_path / "demo"
    assert set(result["dice"]) == {"TC", "WT", "ET"}
    assert all(0.0 <= v <= 1.0 for v in result["dice"].values() if np.isfinite(v))
    assert (out / "overlay.png").stat().st_size > 0
    assert (out / "dice.csv").exists()
    preds = sorted(p.name for p in (out / "predictions").glob("*.nii.gz"))
    assert preds == ["BraTS20_Training_004.nii.gz"]
    assert (result["run_dir"] / "best.pt").exists()
