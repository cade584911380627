"""bench quality: metrics with the BraTS empty-mask rules, one run end to end, the report."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from invseg.bench import quality
from invseg.bench.quality import HD95_EMPTY, Preset
from invseg.bench.quality_report import per_run, quality_markdown, summary

TINY = Preset(shape=(32, 32, 32), crop=16, batch=1, steps=2, lr=1e-3, test_cases=1, base=8,
              overlap=0.0, pool=2)  # fmt: skip


def _mask(*slices: slice) -> torch.Tensor:
    m = torch.zeros(1, 1, 8, 8, 8, dtype=torch.bool)
    if slices:
        m[(0, 0, *slices)] = True
    return m


def test_score_follows_brats_rules_for_empty_masks() -> None:
    empty, cube = _mask(), _mask(slice(2, 6), slice(2, 6), slice(2, 6))
    assert quality._score(empty, empty) == ([1.0], [0.0])
    assert quality._score(empty, cube) == ([0.0], [HD95_EMPTY])
    assert quality._score(cube, empty) == ([0.0], [HD95_EMPTY])
    assert quality._score(cube, cube) == ([1.0], [0.0])


def test_score_hd95_is_in_voxels_of_1mm() -> None:
    ref = _mask(slice(2, 6), slice(2, 6), slice(2, 6))
    shifted = _mask(slice(3, 7), slice(2, 6), slice(2, 6))
    dice, hd = quality._score(shifted, ref)
    assert dice[0] == pytest.approx(0.75)
    assert hd[0] == pytest.approx(1.0)


# h4's hard synth calls numpy.fft with s= but no axes= (DeprecationWarning in NumPy 2.x)
@pytest.mark.filterwarnings("ignore:`axes` should not be `None`:DeprecationWarning")
def test_run_writes_csv_png_and_docs_section(tmp_path: Path) -> None:
    docs = tmp_path / "bench.md"
    md = quality.run(output=tmp_path / "q", cases=2, seeds=2, models=["monai_unet", "fully"],
                     workers=1, docs=docs, preset=TINY, steps=3)  # fmt: skip
    runs = pd.read_csv(tmp_path / "q" / "quality.csv")
    assert len(runs) == 4  # 2 models x 2 seeds x 1 regime
    need = {
        "model",
        "memory",
        "seed",
        "regime",
        "cases",
        "dice_mean",
        "dice_wt",
        "dice_tc",
        "dice_et",
        "hd95",
        "params",
        "activation_mib",
        "peak_mib",
        "step_s",
        "wall_s",
    }
    assert need <= set(runs.columns)
    assert set(runs["memory"]) == {"store", "invert"}
    assert (runs["steps"] == 3).all() and (runs["activation_mib"] > 0).all()
    assert set(runs["regime"]) == {"cases2-steps3"}  # longer than the preset: its own section
    assert runs["dice_mean"].between(0, 1).all()
    assert (tmp_path / "q" / "quality.png").stat().st_size > 1000
    assert "monai_unet" in md and "<!-- bench:quality-cases2-steps3 -->" in docs.read_text()
    assert (docs.parent / "img" / "quality_cases2-steps3.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="--steps"):
        quality.run(output=tmp_path / "r", steps=0, preset=TINY)


def test_summary_gives_mean_and_std_over_cases_and_seeds() -> None:
    rows = []
    for seed, dices in enumerate([(0.2, 0.4), (0.6, 0.8)]):
        for case, d in enumerate(dices):
            rows.append({"model": "m", "memory": "store", "regime": "cases4", "cases": 4,
                         "crop": 32, "seed": seed, "case": case, "dice_mean": d,
                         "dice_wt": d, "dice_tc": d, "dice_et": d, "hd95": 1.0, "params": 10,
                         "activation_mib": 1.0, "peak_mib": 2.0, "step_s": 0.1 + seed,
                         "wall_s": 1.0, "steps": 5})  # fmt: skip
    frame = pd.DataFrame(rows)
    assert per_run(frame)["dice_mean"].round(3).tolist() == [0.3, 0.7]
    s = summary(frame).iloc[0]
    assert s["dice_mean"] == pytest.approx(0.5)
    assert s["seed_std"] == pytest.approx(0.2)
    assert s["dice_std"] == pytest.approx(pd.Series([0.2, 0.4, 0.6, 0.8]).std(ddof=0))
    assert "0.500 ±" in quality_markdown(frame, preset={}, device="cpu")
