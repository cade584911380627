"""Every tutorial script in examples/ runs on tiny generated data, so the docs cannot rot."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
SCRIPTS = sorted(p for p in EXAMPLES.glob("*.py") if not p.name.startswith("_"))


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check_train(result: dict[str, Any], regions: tuple[str, ...]) -> None:
    assert {"best.pt", "last.pt", "metrics.csv"} <= {p.name for p in result["run"].iterdir()}
    assert set(result["dice"]) == set(regions)
    assert all(0.0 <= v <= 1.0 for v in result["dice"].values())


def _check_predict(result: dict[str, Any]) -> None:
    assert result["failed"] == 0
    table = result["table"]
    assert len(table) == 3  # two cases and the mean row
    assert table["dice_WT"].between(0, 1).all()


def _check_monai(result: dict[str, Any]) -> None:
    nbytes = result["bytes"]
    assert nbytes["invert"] * 3 < nbytes["store"]
    assert nbytes["invert"] < nbytes["anchored"] < nbytes["store"]
    assert result["grad_max_diff_anchored"] < 1e-5
    assert result["losses"][-1] < result["losses"][0]


def _check_modl(result: dict[str, Any]) -> None:
    store, invert = result["bytes"]["store"], result["bytes"]["invert"]
    assert store[-1] > 2 * store[0]  # plain autograd grows with the unrolls
    assert invert[-1] < 0.1 * store[-1]
    assert result["bytes"]["invert auto"][-1] < invert[-1]  # fewer anchors kept
    assert result["psnr"]["modl"] > result["psnr"]["zero_filled"]


CHECKS = {
    "train_brats": lambda r: _check_train(r, ("TC", "WT", "ET")),
    "train_iseg": lambda r: _check_train(r, ("CSF", "GM", "WM")),
    "predict_nifti": _check_predict,
    "monai_encoder": _check_monai,
    "modl_mel": _check_modl,
}


def test_every_example_has_a_check() -> None:
    assert {p.stem for p in SCRIPTS} == set(CHECKS)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_example_runs_on_tiny_data(script: Path, tmp_path: Path) -> None:
    result = _load(script, f"example_{script.stem}").main(tmp_path, quick=True)
    CHECKS[script.stem](result)


def test_figure_script_draws_memory_and_overlay_plots(tmp_path: Path) -> None:
    figures = _load(ROOT / "docs" / "make_figures.py", "make_figures")
    paths = [
        figures.memory_vs_depth(tmp_path, quick=True),
        figures.iseg_overlay(tmp_path, tmp_path / "work", quick=True),
        figures.synth_easy_vs_hard(tmp_path, tmp_path / "work", quick=True),
    ]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_committed_figures_are_small() -> None:
    for path in (ROOT / "docs" / "figures").glob("*.png"):
        assert path.stat().st_size < 200_000, path
