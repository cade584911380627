"""Gradient parity invert vs store on CUDA in float32, also with dropout on.

cuDNN may pick non-deterministic algorithms (``torch.backends.cudnn.deterministic`` is left
off) and the two modes run different kernels in backward, so gradients agree up to float32
rounding: each parameter's gradient within ``TOL`` relative (L2) of the store twin's. TF32 is
switched off for these tests (the ``cuda`` fixture), otherwise convolutions round to 10 bits.
"""

from __future__ import annotations

import pytest
import torch

from invseg.engine import AdditiveCoupling, InvertibleSequential
from invseg.nets import FullyInvResUNet, PartiallyInvResUNet
from tests.gpu.conftest import GPU, grads_of, rel_err, worst_rel_err

pytestmark = GPU

TOL = 1e-4
NETS = [PartiallyInvResUNet, FullyInvResUNet]


def _pair(cls: type, device: torch.device, **kw):
    torch.manual_seed(0)
    store = cls(3, 4, 3, channels=(8, 16, 32), memory="store", **kw).to(device).train()
    invert = cls(3, 4, 3, channels=(8, 16, 32), memory="invert", **kw).to(device).train()
    invert.load_state_dict(store.state_dict())
    return store, invert


def _grads(model, x, seed: int = 0):
    torch.manual_seed(seed)  # the same dropout masks in both modes' forward
    model.zero_grad(set_to_none=True)
    out = model(x)
    out.square().mean().backward()
    return out.detach(), grads_of(model)


@pytest.mark.parametrize("cls", NETS, ids=lambda c: c.__name__)
def test_float32_gradients_match_store_twin(cls, cuda):
    x = torch.randn(2, 4, 24, 24, 24, device=cuda)
    store, invert = _pair(cls, cuda)
    out_s, ref = _grads(store, x)
    out_i, got = _grads(invert, x)
    assert rel_err(out_i, out_s) <= TOL
    assert worst_rel_err(got, ref) <= TOL


@pytest.mark.parametrize("cls", NETS, ids=lambda c: c.__name__)
def test_dropout_masks_are_replayed_on_the_cuda_generator(cls, cuda):
    x = torch.randn(1, 4, 24, 24, 24, device=cuda)
    store, invert = _pair(cls, cuda, dropout=0.3)
    out_s, ref = _grads(store, x, seed=7)
    out_i, got = _grads(invert, x, seed=7)
    assert rel_err(out_i, out_s) <= TOL  # forward drew the same masks
    assert worst_rel_err(got, ref) <= TOL  # backward replayed them
    _, other = _grads(store, x, seed=8)
    assert worst_rel_err(other, ref) > 10 * TOL  # other masks give other gradients


def test_anchored_couplings_differentiate_their_convs_on_cuda(cuda):
    """anchor_every=1: every conv differentiated from its input (cuDNN's backward kernels)."""
    x = torch.randn(2, 4, 24, 24, 24, device=cuda)
    store, anchored = _pair(PartiallyInvResUNet, cuda, anchor_every=1, dropout=0.3)
    out_s, ref = _grads(store, x, seed=3)
    out_a, got = _grads(anchored, x, seed=3)
    assert rel_err(out_a, out_s) <= TOL
    assert worst_rel_err(got, ref) <= TOL


def test_engine_chain_input_gradient_matches_on_cuda(cuda):
    def chain(memory):
        torch.manual_seed(1)
        conv = torch.nn.Conv3d(4, 4, 3, padding=1)
        blocks = [AdditiveCoupling(conv) for _ in range(6)]  # G: a copy of F
        return InvertibleSequential(*blocks, memory=memory).to(cuda)

    x = torch.randn(1, 8, 16, 16, 16, device=cuda)
    grads = {}
    for memory in ("store", "checkpoint", "invert"):
        leaf = x.clone().requires_grad_()
        chain(memory)(leaf).square().sum().backward()
        grads[memory] = leaf.grad
    assert rel_err(grads["invert"], grads["store"]) <= TOL
    assert rel_err(grads["checkpoint"], grads["store"]) <= TOL
