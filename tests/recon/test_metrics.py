from __future__ import annotations

import numpy as np
import pytest
import torch

from invseg.recon.metrics import nmse, psnr, ssim

skimage_metrics = pytest.importorskip("skimage.metrics", reason="the reference metrics")
peak_signal_noise_ratio = skimage_metrics.peak_signal_noise_ratio
structural_similarity = skimage_metrics.structural_similarity


def test_metrics_match_fastmri_definitions():
    rng = np.random.default_rng(0)
    gt = rng.random((3, 16, 16))
    pred = gt + 0.05 * rng.standard_normal(gt.shape)
    assert nmse(gt, pred) == pytest.approx(np.sum((gt - pred) ** 2) / np.sum(gt**2))
    assert psnr(gt, pred) == pytest.approx(peak_signal_noise_ratio(gt, pred, data_range=gt.max()))
    ref = np.mean(
        [structural_similarity(g, p, data_range=gt.max(), win_size=7) for g, p in zip(gt, pred)]
    )
    assert ssim(gt, pred) == pytest.approx(ref)


def test_complex_torch_inputs_use_magnitude():
    torch.manual_seed(0)
    x = torch.rand(8, 8) * torch.exp(1j * torch.rand(8, 8))
    assert nmse(x, x.abs()) == pytest.approx(0.0)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shape"):
        psnr(np.ones(3), np.ones(4))
