"""invseg bench plan: the zoo's budget table and its docs section."""

from __future__ import annotations

from pathlib import Path

from invseg.bench import plan

GB = 10**9


def test_zoo_peers_are_planned_at_the_full_field_of_view() -> None:
    cands = plan.zoo_candidates(["monai_unet", "fully"], base=4, arch_crop=32)
    assert [(c.name, c.memory, c.multiple) for c in cands] == [
        ("monai_unet", "store", 8),
        ("fully", "invert", 8),
    ]
    rows = plan.plan_table(cands, [4 * GB, 16 * GB], sizes=(16, 24, 32))
    assert len(rows) == 4
    for r in rows:
        assert r["fov"] == [240, 240, 160] and r["shape"] == [240, 240, 160]
        assert r["max_cube"] % 8 == 0 and r["max_cube_peak_bytes"] <= r["budget_bytes"]
        assert r["target"] == "cuda" and r["temporary_bytes"] == 0
    small, large = (
        {r["model"]: r for r in rows if r["budget_bytes"] == b} for b in (4 * GB, 16 * GB)
    )
    assert large["fully"]["fov_batch"] >= small["fully"]["fov_batch"] >= 1
    assert large["monai_unet"]["max_cube"] > small["monai_unet"]["max_cube"]
    md = plan.table_markdown(rows)
    assert "4 GB: cube / FOV batch" in md and "| fully | invert |" in md


def test_bench_plan_writes_the_budget_section(tmp_path: Path) -> None:
    page = tmp_path / "benchmarks.md"
    page.write_text("# Benchmarks\n")
    md = plan.docs_section(output=page, models=["monai_unet"], base=4)
    text = page.read_text()
    assert "<!-- bench:plan -->" in text and md.strip() in text
    assert "| monai_unet | store |" in md and "80 GB: cube / FOV batch" in md
    assert "4 channels at its first level" in md and "--shape 240 240 155" in md


def test_full_fov_step_is_measured_and_set_against_the_plan(monkeypatch) -> None:
    """The FOV check measures a real step at the (here small) field of view, padded."""
    monkeypatch.setattr(plan, "BRATS_FOV", (40, 40, 38))
    cands = plan.zoo_candidates(["monai_unet", "fully"], base=4, arch_crop=32)
    fits: dict = {}
    plan.plan_table(cands, [4 * GB], sizes=(16, 24, 32), fits=fits)
    assert set(fits) == {"monai_unet", "fully"}
    rows = plan.fov_steps(cands, fits, names=("fully",))
    assert [(r["model"], r["shape"]) for r in rows] == [("fully", (40, 40, 40))]
    r = rows[0]
    assert r["graph_bytes"] > 0
    assert abs(r["planned_graph_bytes"] / r["graph_bytes"] - 1) < 0.15
    md = plan.fov_markdown(rows)
    assert "| fully | invert | 4 x 40 x 40 x 40 |" in md and "%" in md
