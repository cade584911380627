from __future__ import annotations

import itertools

import pytest
import torch

from invseg.engine import InverseDriftWarning
from invseg.recon.baselines import cg_sense, zero_filled
from invseg.recon.dc import DataConsistency
from invseg.recon.denoiser import ResidualDenoiser
from invseg.recon.modl import MoDL, MoDLUnroll
from invseg.recon.operators import SenseOperator
from invseg.recon.simulate import birdcage_maps, poisson_disc_mask, shepp_logan

C128 = torch.complex128


def _problem(n=12, coils=3, acc=3.0, dtype=C128):
    S = birdcage_maps(coils, n)[None].to(dtype)
    op = SenseOperator(S, poisson_disc_mask(n, acc, calib=4, seed=1)[None, None])
    x = shepp_logan(n).to(dtype)[None, None]
    return op, x, op.A(x)


def test_unroll_round_trip():
    torch.manual_seed(0)
    op, _, y = _problem()
    u = MoDLUnroll(
        ResidualDenoiser(channels=8, layers=3),
        DataConsistency(0.05, cg_iters=100, cg_tol=1e-14),
        fixed_point_iters=500,
        fixed_point_tol=1e-14,
    ).double()
    AHy = op.A_adjoint(y)
    with torch.no_grad():
        assert torch.allclose(u.inverse(u(AHy, AHy, op), AHy, op), AHy, atol=1e-9)


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
@pytest.mark.parametrize(
    ("memory", "anchor_every"), [("invert", 2), ("invert", 1), ("checkpoint", 2)]
)
def test_gradient_parity_with_store_every_parameter_including_mu(shared, memory, anchor_every):
    op, x, y = _problem()
    _, ref = _grads("store", op, x, y, shared_weights=shared)
    m, got = _grads(
        memory,
        op,
        x,
        y,
        shared_weights=shared,
        anchor_every=anchor_every,
        drift_every=1,
        drift_tol=1e-3,
    )
    assert set(got) == set(ref)
    assert any(n.endswith("raw_mu") for n in ref)
    for n, g in ref.items():
        assert g.abs().sum() > 0, n
        assert torch.allclose(got[n], g, rtol=1e-6, atol=1e-9), n
    if memory == "invert":
        assert set(m.inverse_errors) == set(range(0, 3, anchor_every))
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
    assert not m.auto_anchors and m.anchor_every == 1  # every unroll's input kept
    assert MoDL(num_unrolls=10, anchor_every="auto").anchor_every == 2  # float32, budget 1e-3
    assert m.chain.drift_tol is None  # drift is measured only when asked
    dc = m.chain.blocks[0].dc
    assert dc.refine_steps == 1 and dc.mu_min == 0.05 and float(dc.mu.detach()) >= 0.05


def _float32_grads(memory: str, op, x, y, **kw):
    torch.manual_seed(0)
    m = MoDL(num_unrolls=12, channels=8, layers=3, memory=memory, **kw)
    (m(y, op) - x).abs().square().mean().backward()
    return m, torch.cat([p.grad.flatten() for p in m.parameters()])


def test_anchored_invert_matches_store_in_float32_where_pure_inversion_drifts():
    op, x, y = _problem(n=16, coils=2, acc=3.0, dtype=torch.complex64)
    _, ref = _float32_grads("store", op, x, y)
    _, got = _float32_grads("invert", op, x, y)  # default: every unroll's input kept
    assert ((got - ref).norm() / ref.norm()).item() <= 1e-5
    m, got = _float32_grads("invert", op, x, y, anchor_every="auto", drift_every=1)  # every 2nd
    assert ((got - ref).norm() / ref.norm()).item() <= 1e-4
    assert set(m.inverse_errors) == set(range(0, 12, 2))
    assert max(m.inverse_errors.values()) <= m.drift_budget
    with pytest.warns(InverseDriftWarning, match="at block 0"):
        pure, got_pure = _float32_grads("invert", op, x, y, anchor_every=None, drift_every=1)
    assert pure.inverse_errors[0] > 1e-2  # 12 closed-form inversions: the drift is reported
    assert not ((got_pure - ref).norm() / ref.norm()).item() <= 1e-4


class _Counting(SenseOperator):
    """A SENSE operator that counts adjoint and normal calls."""

    def __init__(self, op: SenseOperator) -> None:
        super().__init__(op.coil_maps, op.mask)
        self.adjoints = 0

    def A_adjoint(self, y):
        self.adjoints += 1
        return super().A_adjoint(y)


@pytest.mark.parametrize("memory", ["invert", "checkpoint", "store"])
@pytest.mark.parametrize("init", ["adjoint", "sense"])
def test_adjoint_of_y_is_computed_once_per_batch(memory, init):
    op, x, y = _problem(dtype=torch.complex64)
    cop = _Counting(op)
    m = MoDL(num_unrolls=4, channels=4, layers=2, memory=memory, init=init, anchor_every=2)
    (m(y, cop) - x).abs().square().mean().backward()
    assert cop.adjoints == 1


def _count_inverses(m: MoDL) -> list[int]:
    """Count DC inverses: one per rebuilt unroll input and one per drift measurement."""
    calls = [0]
    dc = m.chain.blocks[0].dc  # shared by every unroll
    inv = dc.inverse

    def counted(*a):
        calls[0] += 1
        return inv(*a)

    dc.inverse = counted
    return calls


@pytest.mark.parametrize(("drift_every", "extra"), [(None, 0), (2, 2 * 3)])
def test_drift_is_not_measured_unless_asked(drift_every, extra):
    op, x, y = _problem(dtype=torch.complex64)
    m = MoDL(num_unrolls=6, channels=4, layers=2, anchor_every=2, drift_every=drift_every)
    calls = _count_inverses(m)
    for _ in range(4):  # measured on backward 0 and 2 when drift_every=2
        (m(y, op) - x).abs().square().mean().backward()
    # 3 non-anchored unrolls inverted per step; each measured step re-inverts the 3 anchors
    assert calls[0] == 4 * 3 + extra


def test_auto_anchors_follow_mu_and_the_drift_budget():
    m = MoDL(
        num_unrolls=10, channels=4, layers=2, drift_tol=1e-3, mu_init=0.05, anchor_every="auto"
    ).double()
    k_low = m.anchor_every
    with torch.no_grad():
        m.chain.blocks[0].dc.raw_mu.fill_(5.0)  # mu ~ 5: the DC inverse barely amplifies
    op, x, y = _problem()
    (m(y, op) - x).abs().square().mean().backward()
    assert m.anchor_every > k_low >= 1
    assert MoDL(num_unrolls=10, drift_tol=1e-9, anchor_every="auto").anchor_every == 1
    with pytest.raises(ValueError, match="drift_tol"):
        MoDL(num_unrolls=2, drift_tol=None, anchor_every="auto")
    assert MoDL(num_unrolls=2, drift_tol=None).anchor_every == 1  # no budget needed


def test_certified_lipschitz_stays_below_its_setting_under_high_lr_training():
    torch.manual_seed(0)
    op, x, y = _problem(dtype=torch.complex64)
    m = MoDL(num_unrolls=2, channels=8, layers=3, lipschitz=0.8, memory="store")
    opt = torch.optim.Adam(m.parameters(), lr=0.3)
    for _ in range(6):
        opt.zero_grad()
        (m(y, op) - x).abs().square().mean().backward()
        opt.step()
        m(y, op)  # the weights used in this forward are the ones certified below
        assert m.certified_lipschitz() <= 0.8 * (1 + 1e-6)


@pytest.mark.parametrize("mu", [0.0, -0.1])
def test_non_positive_mu_raises(mu):
    with pytest.raises(ValueError, match="mu_init must be > 0"):
        MoDL(num_unrolls=2, mu_init=mu)
    with pytest.raises(ValueError, match="mu_init must be > 0"):
        DataConsistency(mu)


def test_bad_options_raise_with_hint():
    with pytest.raises(ValueError, match="did you mean 'sense'"):
        MoDL(num_unrolls=2, init="sens")
    with pytest.raises(ValueError):
        MoDL(num_unrolls=2, memory="invertt")
    with pytest.raises(ValueError, match="anchor_every"):
        MoDL(num_unrolls=2, anchor_every="sometimes")
    with pytest.raises(TypeError, match="LinearOperator"):
        MoDL(num_unrolls=1, channels=2, layers=2)(torch.ones(1, 1, 4, 4), object())


def test_baselines_beat_nothing_and_cg_sense_beats_zero_filled():
    op, x, y = _problem(acc=2.0)
    zf = zero_filled(y, op)
    cs = cg_sense(y, op, mu=1e-4, max_iter=50)
    assert (cs - x).norm() < (zf - x).norm()


def test_cine_invert_matches_store_in_float64():
    S = birdcage_maps(2, 8)[None, :, None].expand(1, 2, 4, 8, 8).to(C128)
    mask = torch.zeros(1, 1, 4, 1, 8)
    mask[..., ::2] = 1
    op = SenseOperator(S, mask, fft_ndim=2)
    x = torch.randn(1, 1, 4, 8, 8, dtype=C128, generator=torch.Generator().manual_seed(0))
    y = op.A(x)
    grads = {}
    for memory in ("store", "invert"):
        torch.manual_seed(0)
        m = MoDL(
            3,
            spatial_dims=3,
            channels=4,
            layers=2,
            memory=memory,
            cg_iters=100,
            cg_tol=1e-13,
            fixed_point_tol=1e-13,
            fixed_point_iters=300,
            anchor_every="auto",
        ).double()
        (m(y, op) - x).abs().square().sum().backward()
        grads[memory] = torch.cat([p.grad.flatten() for p in m.parameters()])
    assert m.anchor_every == 3  # float64 budget: unrolls 1 and 2 are rebuilt by inversion
    torch.testing.assert_close(grads["invert"], grads["store"], rtol=1e-7, atol=1e-10)
