"""bench quality: rows trained by ``invseg train``, held-out cases scored by the one scorer,
one run end to end, the report."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
import torch

from invseg.bench import quality
from invseg.bench.quality import Preset
from invseg.bench.quality_report import per_run, quality_markdown, summary
from invseg.runtime.checkpoint import load_checkpoint
from invseg.tasks.seg_metrics import EMPTY_DISTANCE

BENCH = Path(quality.__file__).parent

TINY = Preset(shape=(32, 32, 32), crop=16, batch=1, steps=2, lr=1e-3, test_cases=1, base=8,
              overlap=0.0, pool=2)  # fmt: skip


class _Fixed(torch.nn.Module):
    """A net whose logits are fixed: +20 inside ``masks`` (1, 3, ...), -20 outside."""

    def __init__(self, masks: torch.Tensor) -> None:
        super().__init__()
        self.z = torch.where(masks > 0, 20.0, -20.0)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.z.expand(x.shape[0], -1, -1, -1, -1)


@pytest.mark.parametrize("prediction", ["empty", "reference"])
def test_held_out_cases_are_scored_with_the_brats_rules_of_the_one_scorer(
    tmp_path: Path, prediction: str
) -> None:
    from invseg.data import case_dicts, eval_transforms, synthesize

    case = case_dicts(synthesize("brats", tmp_path, cases=1, shape=(16, 16, 16)).cases)[0]
    label = torch.as_tensor(eval_transforms("brats")(dict(case))["label"])[None]
    assert label.flatten(2).any(-1).all()  # every region present in the reference
    net = _Fixed(label if prediction == "reference" else torch.zeros_like(label))
    job = quality.Job("m", 0, "r", 1, 16, TINY, "", (case,), "cpu", 1, "")
    (row,) = quality._evaluate(net.logits, job, torch.device("cpu"))
    dice, hd = (1.0, 0.0) if prediction == "reference" else (0.0, EMPTY_DISTANCE)
    assert [row[f"dice_{n}"] for n in ("tc", "wt", "et")] == [dice] * 3
    assert [row[f"hd95_{n}"] for n in ("tc", "wt", "et")] == [hd] * 3
    assert (row["dice_mean"], row["hd95"]) == (dice, pytest.approx(hd))
    assert row["case"] == case["case_id"]


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """One small bench run (2 models x 2 seeds, 3 steps): (output, docs page, markdown)."""
    tmp = tmp_path_factory.mktemp("bench")
    docs = tmp / "bench.md"
    md = quality.run(output=tmp / "q", cases=2, seeds=2, models=["monai_unet", "fully"],
                     workers=1, docs=docs, preset=TINY, steps=3)  # fmt: skip
    return tmp / "q", docs, md


def test_run_writes_csv_png_and_docs_section(bench_run, tmp_path: Path) -> None:
    out, docs, md = bench_run
    runs = pd.read_csv(out / "quality.csv")
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
    assert (out / "quality.png").stat().st_size > 1000
    assert "monai_unet" in md and "<!-- bench:quality-cases2-steps3 -->" in docs.read_text()
    assert (docs.parent / "img" / "quality_cases2-steps3.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="--steps"):
        quality.run(output=tmp_path / "r", steps=0, preset=TINY)


def test_each_row_keeps_its_invseg_train_run_and_the_report_says_where(bench_run) -> None:
    out, _, md = bench_run
    cases = pd.read_csv(out / "quality_cases.csv")
    for r in cases.drop_duplicates(["model", "seed"]).itertuples():
        run = out / "runs" / "cases2-steps3" / f"{r.model}-seed{r.seed}"
        assert Path(r.config) == run / "config.yaml"
        assert {"config.yaml", "last.pt", "metrics.csv", "train.log"} <= {
            p.name for p in run.iterdir()
        }
        assert len(pd.read_csv(run / "metrics.csv").dropna(subset=["loss"])) == 3
    assert f"`{(out / 'runs' / 'cases2-steps3').as_posix()}/<model>-seed<seed>/config.yaml`" in md
    assert "Changes from the bench's former own training loop" in md


def test_bench_weights_equal_invseg_train_on_the_rows_config(bench_run, tmp_path: Path) -> None:
    """``invseg train <row>/config.yaml`` repeats the row: last.pt (the final weights, which the
    bench scores: no validation split, so no best.pt) equal bit for bit."""
    from invseg.commands.train import train

    out, _, _ = bench_run
    row = out / "runs" / "cases2-steps3" / "fully-seed1"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the bench's rows: one intra-op thread
    try:
        again = train(row / "config.yaml", output=tmp_path / "again")
    finally:
        torch.set_num_threads(threads)
    bench, mine = (load_checkpoint(d / "last.pt")["model"] for d in (row, again))
    assert not (row / "best.pt").exists()
    assert bench.keys() == mine.keys()
    assert all(torch.equal(bench[k], mine[k]) for k in bench)
    first = load_checkpoint(out / "runs" / "cases2-steps3" / "fully-seed0" / "last.pt")["model"]
    assert not all(torch.equal(first[k], mine[k]) for k in mine)  # the seed matters


@pytest.mark.parametrize("module", ["quality", "quality_config", "recon", "recon_quality"])
def test_training_benches_have_no_training_loop_of_their_own(module: str) -> None:
    """The suites that train go through ``invseg train`` / ``invseg recon train``."""
    text = (BENCH / f"{module}.py").read_text()
    assert re.findall(r"torch\.optim|optimizer\.step|\bopt\.step|lr_scheduler", text) == []


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
