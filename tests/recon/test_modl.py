from __future__ import annotations

import itertools

import pytest
import torch

from invseg.engine import InverseDriftWarning
from invseg.recon.baselines import cg_sense, zero_filled
from invseg.recon.denoiser import ResidualDenoiser
from invseg.recon.modl import DataConsistency, MoDL, MoDLUnroll
from invseg.recon.operators import SenseOperator
from invseg.recon.simulate import birdcage_maps, poisson_disc_mask, shepp_logan

C128 = torch.complex128


def _problem(n=12, coils=3, acc=3.0, dtype=C128):
    S = birdcage_maps(coils, n)[None].to(dtype)
    op = SenseOperator(S, poisson_disc_mask(n, acc, calib=4, seed=1)[None, None])
    x = shepp_logan(n).to(dtype)[None, None]
    return op, x, op.A(x)


@pytest.mark.parametrize("mu", [0.01, 0.05, 1.0])
def test_dc_closed_form_inverse_improves_with_cg_iterations(mu):
    op, x, y = _problem()
    z = x + 0.1 * torch.randn(x.shape, dtype=C128, generator=torch.Generator().manual_seed(0))
    errs = []
    for iters in (2, 10, 100):
        dc = DataConsistency(mu, cg_iters=iters, cg_tol=1e-14).double()
        with torch.no_grad():
            errs.append(((dc.inverse(dc(z, y, op), y, op) - z).norm() / z.norm()).item())
    assert errs[-1] < 1e-8
    assert errs[0] >= errs[-1]


def test_dc_output_solves_the_normal_equations():
    op, x, y = _problem()
    dc = DataConsistency(0.05, cg_iters=100, cg_tol=1e-14).double()
    z = torch.zeros_like(x)
    with torch.no_grad():
        xn = dc(z, y, op)
        r = op.normal(xn) + dc.mu * xn - op.A_adjoint(y) - dc.mu * z
    assert r.norm() / op.A_adjoint(y).norm() < 1e-10


def test_unroll_round_trip():
    torch.manual_seed(0)
    op, _, y = _problem()
    u = MoDLUnroll(
        ResidualDenoiser(channels=8, layers=3),
        DataConsistency(0.05, cg_iters=100, cg_tol=1e-14),
        fixed_point_iters=500,
        fixed_point_tol=1e-14,
    ).double()
    x0 = op.A_adjoint(y)
    with torch.no_grad():
        assert torch.allclose(u.inverse(u(x0, y, op), y, op), x0, atol=1e-9)


def _grads(memory: str, op, x, y, **kw):
    torch.manual_seed(3)
    m = MoDL(
        num_unrolls=3,
        channels=6,
        layers=3,
        memory=memory,
        cg_iters=60,
        cg_tol=1e-14,
        fixed_point_iters=400,
        fixed_point_tol=1e-14,
        **kw,
    ).double()
    loss = (m(y, op) - x).abs().square().sum()
    loss.backward()
    return m, {n: p.grad.clone() for n, p in m.named_parameters()}


@pytest.mark.parametrize("shared", [True, False])
def test_gradient_parity_invert_vs_store_every_parameter_including_mu(shared):
    op, x, y = _problem()
    _, ref = _grads("store", op, x, y, shared_weights=shared)
    m, got = _grads("invert", op, x, y, shared_weights=shared, anchor_every=2)
    assert set(got) == set(ref)
    assert any(n.endswith("raw_mu") for n in ref)
    for n, g in ref.items():
        assert g.abs().sum() > 0, n
        assert torch.allclose(got[n], g, rtol=1e-6, atol=1e-9), n
    assert set(m.inverse_errors) == {0, 2}
    assert max(m.inverse_errors.values()) < 1e-6


def test_training_steps_reduce_the_loss():
    torch.manual_seed(0)
    op, x, y = _problem(dtype=torch.complex64)
    m = MoDL(num_unrolls=3, channels=8, layers=3)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    losses = []
    for _ in range(8):
        opt.zero_grad()
        loss = (m(y, op) - x).abs().square().mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.95 * losses[0]
    assert all(b < a for a, b in itertools.pairwise(losses[:5]))


def test_default_arguments_work_in_2d():
    m = MoDL(num_unrolls=10)
    assert m.num_unrolls == 10 and m.memory == "invert"
    assert len({id(u.denoiser) for u in m.chain.blocks}) == 1  # shared weights
    assert m.chain.anchor_every == 2 and m.chain.drift_tol == 5e-2
    assert m.chain.blocks[0].dc.refine_steps == 1


@pytest.mark.parametrize("mu", [0.05, 0.5])
def test_dc_refinement_inverts_the_truncated_cg(mu):
    op, x, y = _problem()
    z = x + 0.1 * torch.randn(x.shape, dtype=C128, generator=torch.Generator().manual_seed(0))
    errs = []
    for steps in (0, 1, 2):
        dc = DataConsistency(mu, cg_iters=10, cg_tol=0.0, refine_steps=steps).double()
        with torch.no_grad():
            errs.append(((dc.inverse(dc(z, y, op), y, op) - z).norm() / z.norm()).item())
    assert errs[0] > 1e-8  # truncated CG: the closed form alone is off
    assert errs[1] < 0.1 * errs[0] and errs[2] < 1e-3 * errs[0]


def _float32_grads(memory: str, op, x, y, **kw):
    torch.manual_seed(0)
    m = MoDL(num_unrolls=12, channels=8, layers=3, memory=memory, **kw)
    (m(y, op) - x).abs().square().mean().backward()
    return m, torch.cat([p.grad.flatten() for p in m.parameters()])


def test_default_anchored_invert_matches_store_in_float32_where_pure_inversion_drifts():
    op, x, y = _problem(n=16, coils=2, acc=3.0, dtype=torch.complex64)
    _, ref = _float32_grads("store", op, x, y)
    m, got = _float32_grads("invert", op, x, y)  # defaults: anchor_every=2, one DC refinement
    assert ((got - ref).norm() / ref.norm()).item() <= 1e-3
    assert set(m.inverse_errors) == set(range(0, 12, 2))
    assert max(m.inverse_errors.values()) <= m.chain.drift_tol
    with pytest.warns(InverseDriftWarning, match="at block 0"):
        pure, got_pure = _float32_grads("invert", op, x, y, anchor_every=None)
    assert pure.inverse_errors[0] > 1.0  # 12 closed-form inversions: the drift is reported
    assert not ((got_pure - ref).norm() / ref.norm()).item() <= 1e-3


@pytest.mark.parametrize("mu", [0.0, -0.1])
def test_non_positive_mu_raises(mu):
    with pytest.raises(ValueError, match="mu must be > 0"):
        MoDL(num_unrolls=2, mu_init=mu)
    with pytest.raises(ValueError, match="mu must be > 0"):
        DataConsistency(mu)


def test_bad_options_raise_with_hint():
    with pytest.raises(ValueError, match="did you mean 'sense'"):
        MoDL(num_unrolls=2, init="sens")
    with pytest.raises(ValueError):
        MoDL(num_unrolls=2, memory="invertt")
    with pytest.raises(TypeError, match="SenseOperator"):
        MoDL(num_unrolls=1, channels=2, layers=2)(torch.ones(1, 1, 4, 4), object())


def test_baselines_beat_nothing_and_cg_sense_beats_zero_filled():
    op, x, y = _problem(acc=2.0)
    zf = zero_filled(y, op)
    cs = cg_sense(y, op, mu=1e-4, max_iter=50)
    assert (cs - x).norm() < (zf - x).norm()
