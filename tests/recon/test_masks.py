from __future__ import annotations

import numpy as np
import pytest
import torch

from invseg.recon import masks, simulate
from invseg.recon.masks import cartesian_kt_mask, poisson_disc_mask


def test_masks_stay_importable_from_simulate():
    assert simulate.poisson_disc_mask is masks.poisson_disc_mask
    assert simulate.cartesian_kt_mask is masks.cartesian_kt_mask
    assert {"poisson_disc_mask", "cartesian_kt_mask"} <= set(simulate.__all__)


@pytest.mark.parametrize("acc", [2.0, 4.0, 6.0])
def test_poisson_mask_hits_acceleration_and_keeps_calibration(acc):
    m = poisson_disc_mask(32, acc, calib=6, seed=0)
    assert abs(m.numel() / m.sum().item() - acc) / acc < 0.15
    assert bool((m[13:19, 13:19] == 1).all())
    # variable density: the centre is sampled more densely than the periphery
    assert m[8:24, 8:24].mean() > m.mean()


def test_masks_are_deterministic_given_seed():
    assert torch.equal(poisson_disc_mask(24, 3.0, seed=5), poisson_disc_mask(24, 3.0, seed=5))
    assert not torch.equal(poisson_disc_mask(24, 3.0, seed=5), poisson_disc_mask(24, 3.0, seed=6))
    a = cartesian_kt_mask(4, 32, 4.0, seed=np.random.default_rng(1))
    assert torch.equal(a, cartesian_kt_mask(4, 32, 4.0, seed=np.random.default_rng(1)))


def test_kt_mask_differs_per_frame_and_keeps_centre():
    m = cartesian_kt_mask(6, 32, 4.0, calib=4, seed=0)
    assert m.shape == (6, 1, 32)
    assert bool((m[:, 0, 14:18] == 1).all())
    assert len({tuple(r.flatten().tolist()) for r in m}) > 1
    assert (m.sum(-1) == 8).all()


def test_kt_mask_union_covers_kspace_over_time():
    # 8 frames x (2 calib + 3 drawn) lines at R=6: the drawn lines never repeat before every
    # line was used, so the union has 2 + 8 * 3 = 26 of 32 lines (independent draws: ~14).
    m = cartesian_kt_mask(8, 32, 6.0, calib=2, seed=0)
    assert int(m.amax(0).sum()) == 26
    assert (m.sum(-1) == 5).all()
    # once every line is used, a new round starts: 12 frames x 6 drawn lines of 28 cover all
    assert int(cartesian_kt_mask(12, 32, 3.2, calib=4, seed=1).amax(0).sum()) == 32
