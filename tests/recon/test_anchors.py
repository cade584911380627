from __future__ import annotations

import pytest
import torch

from invseg.recon import MoDL, anchor_spacing, fixed_point_slack

F32 = {"eps": torch.finfo(torch.float32).eps, "cg_tol": 1e-5}
F64 = {"eps": torch.finfo(torch.float64).eps, "cg_tol": 1e-9}


@pytest.mark.parametrize(
    ("mu", "lip", "drift_tol", "prec"),
    [(0.05, 0.9, 1e-3, F32), (0.1, 0.9, 1e-3, F32), (0.5, 0.5, 1e-3, F32), (0.05, 0.9, 1e-3, F64)],
)
def test_slack_is_the_loosest_stop_that_keeps_the_spacing(mu, lip, drift_tol, prec):
    k = anchor_spacing(mu, lip, drift_tol=drift_tol, **prec, fixed_point_tol=1e-12)
    assert k >= 2
    t = fixed_point_slack(k, mu, lip, drift_tol=drift_tol, **prec)
    assert t > 1e-12
    assert anchor_spacing(mu, lip, drift_tol=drift_tol, **prec, fixed_point_tol=0.99 * t) == k
    assert anchor_spacing(mu, lip, drift_tol=drift_tol, **prec, fixed_point_tol=1.01 * t) < k


def test_nothing_inverted_leaves_the_stop_free():
    assert fixed_point_slack(1, 0.05, 0.9, drift_tol=1e-3, **F32) == float("inf")


def test_default_model_spends_the_budget_on_the_fixed_point_stop():
    m = MoDL(num_unrolls=10, channels=4, layers=2)
    assert m.anchor_every == 2
    t = fixed_point_slack(2, float(m.chain.blocks[0].dc.mu.detach()), 0.9, drift_tol=1e-3, **F32)
    assert all(u.fixed_point_tol == pytest.approx(t) for u in m.chain.blocks)
    assert t > 50 * 1e-6  # the spacing is planned at 1e-6
    fixed = MoDL(num_unrolls=10, channels=4, layers=2, fixed_point_tol=1e-7)
    assert fixed.anchor_every == 2
    assert all(u.fixed_point_tol == 1e-7 for u in fixed.chain.blocks)
