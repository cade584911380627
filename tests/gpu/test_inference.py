"""Inference on CUDA: sliding windows with a CPU-held volume, and predict CUDA vs CPU."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from invseg.nets import FullyInvResUNet, PartiallyInvResUNet
from tests.gpu.conftest import GPU

pytestmark = GPU


def test_sliding_window_runs_the_net_on_cuda_and_keeps_the_volume_on_cpu(cuda):
    from monai.inferers import sliding_window_inference

    torch.manual_seed(0)
    net = PartiallyInvResUNet(3, 4, 3, channels=(8, 16), memory="invert").eval()
    volume = torch.randn(1, 4, 40, 36, 44)  # larger than one window, stays on the CPU
    with torch.no_grad():
        ref = sliding_window_inference(volume, (32, 32, 32), 2, net, overlap=0.25)
        net_cuda = net.to(cuda)
        got = sliding_window_inference(
            volume, (32, 32, 32), 2, net_cuda, overlap=0.25, sw_device=cuda, device="cpu"
        )
    assert got.device.type == "cpu" and got.shape == (1, 3, 40, 36, 44)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


def test_fully_invres_eval_output_matches_cpu(cuda):
    torch.manual_seed(0)
    net = FullyInvResUNet(3, 4, 3, channels=(8, 16), memory="invert").eval()
    x = torch.randn(1, 4, 24, 24, 24)
    with torch.no_grad():
        ref = net(x)
        got = net.to(cuda)(x.to(cuda)).cpu()
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


@pytest.fixture
def _nilearn() -> None:
    pytest.importorskip("nilearn", reason="the synthetic dataset reads nilearn's MNI152 maps")


@pytest.mark.usefixtures("_nilearn")
def test_predict_one_case_on_cuda_gives_the_cpu_labels(trained_run: Path, brats_tiny, tmp_path):
    from invseg.commands.predict import predict

    case = brats_tiny.cases[0]
    labels = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / device
        assert predict(trained_run / "best.pt", [case.images[0].parent], out, device=device) == 0
        labels[device] = np.asarray(nib.load(out / f"{case.case_id}.nii.gz").dataobj)
    assert labels["cuda"].shape == labels["cpu"].shape
    # thresholds can flip where a probability sits on 0.5 within float32 rounding
    assert (labels["cuda"] == labels["cpu"]).mean() >= 0.999
