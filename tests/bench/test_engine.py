"""``invseg bench engine``: every mechanism in one table, peers included."""

from __future__ import annotations

import warnings

import pytest
import torch

from invseg.bench import engine as bench_engine


def test_compare_modes_has_every_row_and_the_expected_memory_order():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # memcnn's TypedStorage deprecation
        frame = bench_engine.compare_modes(
            depth=4, channels=4, size=8, device=torch.device("cpu"), repeats=1
        )
    act = frame["activation MiB"]
    expected = {
        "store",
        "checkpoint",
        "invert",
        "selective checkpoint (torch)",
        "save_on_cpu (torch)",
    }
    assert expected <= set(frame.index)
    assert act["invert"] < act["checkpoint"] < act["selective checkpoint (torch)"] < act["store"]
    assert act["save_on_cpu (torch)"] == pytest.approx(act["store"])  # CPU: nothing moves
    assert frame.loc["store", "time vs store"] == 1.0
    assert frame["peak CUDA MiB"].isna().all()


@pytest.mark.slow
def test_run_writes_the_engine_section_with_the_peer_sentence(tmp_path):
    out = tmp_path / "benchmarks.md"
    markdown = bench_engine.run(quick=True, output=out)
    assert "<!-- bench:engine -->" in out.read_text()
    assert "selective checkpoint (torch)" in markdown and "`save_on_cpu` holds" in markdown
    assert (tmp_path / "img" / "engine_memory_vs_depth.png").exists()
