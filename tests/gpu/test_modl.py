"""MoDL on CUDA: invert memory flat in the number of unrolls, gradients as on the CPU."""

from __future__ import annotations

import pytest
import torch

from invseg.recon.modl import MoDL
from invseg.recon.operators import SenseOperator
from invseg.recon.simulate import birdcage_maps, poisson_disc_mask, shepp_logan
from tests.gpu.conftest import GPU

pytestmark = GPU


def _problem(device, n=32, coils=4, acc=3.0):
    S = birdcage_maps(coils, n)[None].to(torch.complex64)
    op = SenseOperator(S, poisson_disc_mask(n, acc, calib=6, seed=1)[None, None]).to(device)
    x = shepp_logan(n).to(torch.complex64)[None, None].to(device)
    return op, x, op.A(x)


def _peak(model, op, x, y, device) -> int:
    model.zero_grad(set_to_none=True)
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    (model(y, op) - x).abs().square().mean().backward()
    torch.cuda.synchronize(device)
    grads = sum(p.numel() * p.element_size() for p in model.parameters())
    return torch.cuda.max_memory_allocated(device) - base - grads


def test_pure_invert_memory_is_flat_from_4_to_30_unrolls_while_store_grows(cuda):
    """Memory only: pure inversion (``anchor_every=None``) has no use for its gradients past
    a few unrolls (documented in :class:`MoDL`), but its memory is the engine's claim."""
    op, x, y = _problem(cuda)
    peaks = {}
    for memory, n in (("invert", 4), ("invert", 30), ("store", 4), ("store", 30)):
        torch.manual_seed(0)
        model = MoDL(n, channels=32, layers=5, memory=memory, anchor_every=None, drift_tol=None)
        peaks[memory, n] = _peak(model.to(cuda), op, x, y, cuda)
    assert peaks["invert", 30] <= 1.10 * peaks["invert", 4], peaks
    assert peaks["store", 30] > 4 * peaks["store", 4] * 0.5, peaks  # store grows with depth
    assert peaks["invert", 30] < 0.25 * peaks["store", 30], peaks


@pytest.mark.parametrize("anchor_every", [1, "auto"])
@pytest.mark.parametrize("unrolls", [4, 12])
def test_anchored_invert_grads_match_store_within_the_cpu_tolerance(cuda, unrolls, anchor_every):
    op, x, y = _problem(cuda, n=16, coils=2)
    grads = {}
    for memory in ("store", "invert"):  # auto: every 2nd unroll in float32, one DC refinement
        torch.manual_seed(0)
        model = MoDL(unrolls, channels=8, layers=3, memory=memory, anchor_every=anchor_every)
        model = model.to(cuda)
        (model(y, op) - x).abs().square().mean().backward()
        grads[memory] = torch.cat([p.grad.flatten() for p in model.parameters()])
    ref, got = grads["store"], grads["invert"]
    assert ((got - ref).norm() / ref.norm()).item() <= 1e-3  # as tests/recon/test_modl.py
