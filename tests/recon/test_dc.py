from __future__ import annotations

import pytest
import torch

from invseg.recon.dc import DataConsistency, dc_solve
from invseg.recon.operators import SenseOperator
from invseg.recon.simulate import birdcage_maps, poisson_disc_mask, shepp_logan

C128 = torch.complex128


def _problem(n=12, coils=3, acc=3.0):
    S = birdcage_maps(coils, n)[None].to(C128)
    op = SenseOperator(S, poisson_disc_mask(n, acc, calib=4, seed=1)[None, None])
    x = shepp_logan(n).to(C128)[None, None]
    return op, x, op.A_adjoint(op.A(x))


def _rand(shape, seed):
    return torch.randn(shape, dtype=C128, generator=torch.Generator().manual_seed(seed))


def _exact_solve(op, z, AHy, mu):
    """Dense (A^H A + mu I)^{-1}(A^H y + mu z) by torch.linalg.solve, differentiable."""
    n = z.numel()
    eye = torch.eye(n, dtype=C128)
    cols = [op.normal(eye[i].reshape(z.shape)).flatten() for i in range(n)]
    H = torch.stack(cols, 1) + mu * eye
    return torch.linalg.solve(H, (AHy + mu * z).flatten()).reshape(z.shape)


def test_implicit_backward_matches_autograd_through_an_exact_solve():
    op, _, AHy = _problem(n=8, coils=2)
    z0, w = _rand(AHy.shape, 0), _rand(AHy.shape, 1)
    got, ref = [], []
    for fn, out in (
        (lambda z, a, m: dc_solve(z, a, m, op, max_iter=200, tol=1e-14), got),
        (lambda z, a, m: _exact_solve(op, z, a, m), ref),
    ):
        z = z0.clone().requires_grad_()
        a = AHy.clone().requires_grad_()
        mu = torch.tensor(0.07, dtype=torch.float64, requires_grad=True)
        loss = (w.conj() * fn(z, a, mu)).real.sum() + fn(z, a, mu).abs().square().sum()
        out.extend(torch.autograd.grad(loss, (z, a, mu)))
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-11)


def test_implicit_backward_matches_finite_differences_in_mu():
    op, _, AHy = _problem(n=8, coils=2)
    z = _rand(AHy.shape, 2)
    mu = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    loss = dc_solve(z, AHy, mu, op, max_iter=200, tol=1e-14).abs().square().sum()
    (g,) = torch.autograd.grad(loss, mu)
    h = 1e-6
    with torch.no_grad():
        fd = [
            dc_solve(z, AHy, mu + s, op, max_iter=200, tol=1e-14).abs().square().sum()
            for s in (h, -h)
        ]
    assert float(g) == pytest.approx(float((fd[0] - fd[1]) / (2 * h)), rel=1e-6)


def test_known_output_skips_the_forward_solve_and_gives_the_same_gradient():
    op, _, AHy = _problem()
    calls = []

    class Counting(SenseOperator):
        def normal(self, x):
            calls.append(1)
            return super().normal(x)

    cop = Counting(op.coil_maps, op.mask)
    z = _rand(AHy.shape, 3).requires_grad_()
    mu = torch.tensor(0.05, dtype=torch.float64)
    x = dc_solve(z, AHy, mu, cop, max_iter=100, tol=1e-12)
    (g1,) = torch.autograd.grad(x.abs().square().sum(), z)
    calls.clear()
    x2 = dc_solve(z, AHy, mu, cop, max_iter=100, tol=1e-12, output=x.detach())
    assert not calls  # no forward CG
    (g2,) = torch.autograd.grad(x2.abs().square().sum(), z)
    torch.testing.assert_close(g1, g2)


def test_cg_stops_on_its_tolerance_and_solves_the_normal_equations():
    op, x, AHy = _problem()
    dc = DataConsistency(0.05, cg_iters=200, cg_tol=1e-10).double()
    z = torch.zeros_like(x)
    with torch.no_grad():
        xn = dc(z, AHy, op)
        r = op.normal(xn) + dc.mu * xn - AHy
    assert r.norm() / AHy.norm() < 1e-10


@pytest.mark.parametrize("mu", [0.05, 0.5])
def test_dc_refinement_inverts_the_inexact_cg(mu):
    op, x, AHy = _problem()
    z = x + 0.1 * _rand(x.shape, 0)
    errs = []
    for steps in (0, 1, 2):
        dc = DataConsistency(mu, cg_iters=10, cg_tol=0.0, refine_steps=steps).double()
        with torch.no_grad():
            errs.append(((dc.inverse(dc(z, AHy, op), AHy, op) - z).norm() / z.norm()).item())
    assert errs[0] > 1e-8  # truncated CG: the closed form alone is off
    assert errs[1] < 0.1 * errs[0] and errs[2] < 1e-3 * errs[0]


def test_mu_never_goes_below_its_floor_under_high_lr_training():
    op, x, AHy = _problem()
    dc = DataConsistency(0.06, mu_min=0.05, cg_iters=10).double()
    opt = torch.optim.SGD(dc.parameters(), lr=1e4)
    z = torch.zeros_like(x)
    seen = []
    for _ in range(20):  # the loss wants mu -> 0 (x = A^H y solve without the z prior)
        opt.zero_grad()
        (dc(z, AHy, op) - x).abs().square().sum().backward()
        opt.step()
        seen.append(float(dc.mu.detach()))
    assert min(seen) >= 0.05
    assert min(seen) < 0.0501  # it was pushed to the floor


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mu_init": 0.01}, "below the floor"),
        ({"mu_min": 0.0}, "mu_min must be > 0"),
        ({"cg_iters": 0}, "cg_iters"),
        ({"refine_steps": -1}, "refine_steps"),
    ],
)
def test_bad_dc_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DataConsistency(**kwargs)
