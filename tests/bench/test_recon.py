from __future__ import annotations

import pytest
import torch

from invseg.bench import recon


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


def test_speed_variants_share_the_trained_weights():
    cfg = {**recon.PRESETS["quick"], "channels": 4, "warm_steps": 2}
    op, x, y = recon._problem_2d(16, 2, torch.device("cpu"))
    src = recon._trained(cfg, op, x, y, torch.device("cpu"))
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
