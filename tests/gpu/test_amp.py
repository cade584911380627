"""Mixed precision on CUDA: fp16 autocast with GradScaler, bf16 autocast, the drift check."""

from __future__ import annotations

import warnings

import pytest
import torch

from invseg.engine import AdditiveCoupling, InverseDriftWarning, InvertibleSequential
from invseg.nets import FullyInvResUNet, PartiallyInvResUNet
from tests.gpu.conftest import GPU, grads_of, rel_err

pytestmark = GPU

NETS = [PartiallyInvResUNet, FullyInvResUNet]
# Whole-gradient relative error against float32 on the same weights: fp16 keeps 11 mantissa
# bits, bf16 8; errors add up over the layers (and the rebuilt inputs in invert mode).
TOL = {torch.float16: 5e-2, torch.bfloat16: 1.5e-1}


def _flat(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.flatten() for g in grads.values()])


def _float32_grads(model, x):
    model.zero_grad(set_to_none=True)
    model(x).square().mean().backward()
    return _flat(grads_of(model))


@pytest.mark.parametrize("cls", NETS, ids=lambda c: c.__name__)
def test_fp16_autocast_with_grad_scaler_gives_finite_loss_and_close_grads(cls, cuda):
    torch.manual_seed(0)
    model = cls(3, 4, 3, channels=(8, 16, 32), memory="invert").to(cuda).train()
    x = torch.randn(1, 4, 32, 32, 32, device=cuda)
    ref = _float32_grads(model, x)
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0**10)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    model.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.float16):
        loss = model(x).square().mean()
    assert torch.isfinite(loss)
    scaler.scale(loss).backward()
    scaler.unscale_(opt)
    got = _flat(grads_of(model))
    assert torch.isfinite(got).all()
    assert rel_err(got, ref) <= TOL[torch.float16]
    scaler.step(opt)  # no inf/nan found: the step is taken and the scale kept
    scaler.update()
    assert scaler.get_scale() == 2.0**10


@pytest.mark.parametrize("cls", NETS, ids=lambda c: c.__name__)
def test_bf16_autocast_gives_finite_loss_and_close_grads(cls, cuda):
    torch.manual_seed(0)
    model = cls(3, 4, 3, channels=(8, 16, 32), memory="invert").to(cuda).train()
    x = torch.randn(1, 4, 32, 32, 32, device=cuda)
    ref = _float32_grads(model, x)
    model.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(x).square().mean()
    assert torch.isfinite(loss)
    loss.backward()
    got = _flat(grads_of(model))
    assert torch.isfinite(got).all()
    assert rel_err(got, ref) <= TOL[torch.bfloat16]


def _chain(cuda, **kw):
    torch.manual_seed(0)
    blocks = [
        AdditiveCoupling(
            torch.nn.Sequential(
                torch.nn.GroupNorm(2, 4),
                torch.nn.LeakyReLU(0.01),
                torch.nn.Conv3d(4, 4, 3, padding=1),
            )
        )
        for _ in range(32)
    ]
    return InvertibleSequential(*blocks, **kw).to(cuda)


def test_drift_check_reports_bf16_drift_and_stays_quiet_in_float32(cuda):
    """As documented: ``drift_tol`` measures the rebuilt chain input and warns above it."""
    x = torch.randn(1, 8, 16, 16, 16, device=cuda)
    chain = _chain(cuda, drift_tol=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", InverseDriftWarning)
        chain(x.clone().requires_grad_()).square().mean().backward()
    assert set(chain.inverse_errors) == {0} and chain.inverse_errors[0] <= 1e-3
    chain = _chain(cuda, drift_tol=1e-6)
    with pytest.warns(InverseDriftWarning, match="at block 0"):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = chain(x.clone().requires_grad_())
        out.float().square().mean().backward()
    assert chain.inverse_errors[0] > 1e-6
    chain = _chain(cuda, drift_tol=1e-6, on_drift="checkpoint")
    with pytest.warns(InverseDriftWarning, match="switching"):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = chain(x.clone().requires_grad_())
        out.float().square().mean().backward()
    assert chain.memory == "checkpoint"
