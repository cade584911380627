"""The demo: synthesise -> train -> predict -> evaluate, plus its bundled config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from invseg.commands.demo import DEMO_PRESET, DEMO_SHAPE, demo
from invseg.runtime.config import PACKAGED, find_config
from invseg.tasks.config import load_config, load_recon_config

REPO = Path(__file__).resolve().parents[2]


class StopDemo(Exception):
    """Raised by a stand-in to stop the demo after it asked for its data."""


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
    assert cfg.model["_target_"].startswith("invseg.nets.")


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


def test_demo_trains_on_the_hard_preset_whose_statistics_are_not_easy(tmp_path, monkeypatch):
    import invseg.data
    from invseg.data.synth import flair_threshold_dice, label_statistics

    calls: list[dict] = []

    def record(*args, **kwargs):
        calls.append({"args": args, **kwargs})
        raise StopDemo  # stop the demo before training

    monkeypatch.setattr(invseg.data, "synthesize", record)
    with pytest.raises(StopDemo):
        demo(tmp_path / "demo", seed=0)
    (call,) = calls
    assert call["preset"] == DEMO_PRESET == "hard" and call["shape"] == DEMO_SHAPE
    monkeypatch.undo()
    kind, _ = call.pop("args")
    info = invseg.data.synthesize(kind, tmp_path / "data", **call)
    stats = label_statistics(info)
    assert len(stats) == 8 and stats["lesions"].between(1, 3).all()
    # hard: whole tumour 0.3-6% of the brain (easy: 1.5-10%, median 4%)
    assert stats["wt_fraction"].between(0.0015, 0.07).all()
    assert stats["wt_fraction"].median() < 0.03
    # a FLAIR threshold that knows the answer no longer finds the whole tumour (easy: > 0.85)
    assert flair_threshold_dice(info).mean() < 0.65
