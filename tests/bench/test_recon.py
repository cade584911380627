from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from invseg.bench import recon, recon_quality
from invseg.runtime.checkpoint import load_checkpoint

#: A cine quality preset small enough for a test (2 steps on 4x16x16, 2 coils).
TINY_CINE = {
    **recon.PRESETS["quick"], "cine_shape": (4, 16, 16), "cine_coils": 2, "cine_channels": 4,
    "calib": 2, "train": 2, "val": 1, "steps": 2, "batch": 1,
}  # fmt: skip


def test_presets_meet_the_quality_protocol():
    for cfg in recon.PRESETS.values():
        assert cfg["val"] >= 8 and cfg["seeds"] >= 2


@pytest.mark.parametrize(("per_voxel", "fixed", "expected"), [(1024.0, 0.0, 192), (2**40, 0, 0)])
def test_largest_depth_fits_12_gib(per_voxel, fixed, expected):
    depth = recon._largest(per_voxel, fixed, 256 * 256)
    assert depth == expected
    assert depth * per_voxel * 256 * 256 + fixed <= recon.GIB12


@pytest.mark.parametrize("iters", [1, 3])
def test_passes_per_inversion_counts_the_fixed_point_passes(iters):
    op, x, y = recon._problem_2d(16, 2, torch.device("cpu"))
    m = recon._model(4, "invert", 4, "cpu", anchor_every=2, fixed_point_tol=1e-30)
    for u in m.chain.blocks:
        u.fixed_point_iters = iters  # the tolerance is never met: every inversion runs them all
    assert recon._passes_per_inversion(m, y, op, x) == iters


def test_speed_variants_share_the_trained_weights(tmp_path):
    cfg = {**recon.PRESETS["quick"], "n": 16, "coils": 2, "channels": 4, "warm_steps": 2}
    src = recon._trained(cfg, torch.device("cpu"), tmp_path / "warm")
    assert (tmp_path / "warm" / "config.yaml").is_file()
    fresh = recon._model(10, "store", 4, "cpu")
    m = recon._variant(30, "invert", {}, src, cfg, torch.device("cpu"))
    w = m.chain.blocks[29].denoiser.state_dict()
    assert all(torch.equal(w[k], v) for k, v in src.chain.blocks[0].denoiser.state_dict().items())
    assert not torch.equal(fresh.chain.blocks[0].dc.raw_mu, m.chain.blocks[29].dc.raw_mu)


def test_run_writes_only_the_requested_tables(tmp_path, monkeypatch):
    sizes = {"store": 18, "checkpoint": 150, "invert": 149, "invert auto": 154}
    monkeypatch.setattr(recon, "_scale", lambda cfg: {"10 unrolls": sizes})
    md = recon.run(quick=True, output=tmp_path / "b.md", parts=["scale"])
    assert "| 10 unrolls | 18 | 150 | 149 | 154 |" in md
    assert "### Largest size" in md and "### Quality" not in md and "### Memory modes" not in md
    assert "<!-- bench:recon -->" in (tmp_path / "b.md").read_text()


@pytest.mark.parametrize("parts", [["speeed"], []])
def test_run_refuses_unknown_parts_before_measuring(parts, tmp_path):
    with pytest.raises(ValueError, match="parts must be some of"):
        recon.run(output=tmp_path / "b.md", parts=parts)
    assert not (tmp_path / "b.md").exists()


def test_quality_row_weights_equal_invseg_recon_train_on_its_config(tmp_path):
    """``invseg recon train <row>/config.yaml`` repeats a MoDL row: last.pt equal bit for bit,
    and the bench scores exactly those weights."""
    from invseg.commands.recon import train_recon

    run = tmp_path / "row"
    config = recon_quality.row_config(TINY_CINE, 2, 1, device="cpu", run_dir=run)
    model = recon_quality.trained_modl(config, recon_quality.train_row(config, run), "cpu")
    train_recon(run / "config.yaml", output=tmp_path / "again")
    bench, mine = (load_checkpoint(d / "last.pt")["model"] for d in (run, tmp_path / "again"))
    assert bench.keys() == mine.keys() and all(torch.equal(bench[k], mine[k]) for k in bench)
    assert all(torch.equal(v, mine[k]) for k, v in model.state_dict().items())
    torch.manual_seed(1)  # the initial weights of the row (train.seed 1): training moved them
    init = recon.MoDL(2, spatial_dims=3, channels=4, memory="store", mu_init=0.1).state_dict()
    assert not all(torch.equal(init[k], mine[k]) for k in init)


def test_quality_markdown_names_the_row_configs():
    quality = {k: np.ones((2, 2)) for k in ("CG-SENSE (mu 0.01)", "MoDL 4 unrolls",
                                            "MoDL 10 unrolls")}  # fmt: skip
    md = "\n".join(recon_quality.markdown(TINY_CINE, quality, recon.PRESETS["full"],
                                          Path("bench_recon")))  # fmt: skip
    assert "`invseg recon train bench_recon/quality/modl<n>-seed<seed>/config.yaml`" in md
    assert "Changes from the bench's former own loop" in md
