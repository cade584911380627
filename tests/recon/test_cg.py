from __future__ import annotations

import pytest
import torch

from invseg.recon.cg import conjugate_gradient


def test_cg_solves_known_hermitian_system():
    g = torch.Generator().manual_seed(0)
    n = 12
    Q = torch.randn(2, n, n, dtype=torch.complex128, generator=g)
    H = Q.conj().transpose(-1, -2) @ Q  # (2, n, n) Hermitian PSD, batched
    x_true = torch.randn(2, n, dtype=torch.complex128, generator=g)
    mu = 0.5
    b = torch.einsum("bij,bj->bi", H, x_true) + mu * x_true
    x, info = conjugate_gradient(
        lambda v: torch.einsum("bij,bj->bi", H, v),
        b,
        mu=mu,
        max_iter=200,
        tol=1e-12,
        return_info=True,
    )
    assert torch.allclose(x, x_true, atol=1e-8)
    assert info.residual <= 1e-12 and info.iterations <= 200


def test_cg_stops_at_tolerance_and_respects_max_iter():
    d = torch.linspace(1, 10, 50, dtype=torch.float64)[None]
    _, info = conjugate_gradient(
        lambda v: d * v,
        torch.ones(1, 50, dtype=torch.float64),
        max_iter=3,
        tol=0.0,
        return_info=True,
    )
    assert info.iterations == 3
    _, info = conjugate_gradient(
        lambda v: 2 * v,
        torch.ones(1, 5, dtype=torch.float64),
        max_iter=50,
        tol=1e-10,
        return_info=True,
    )
    assert info.iterations == 1


def test_cg_bad_arguments():
    with pytest.raises(ValueError, match="max_iter"):
        conjugate_gradient(lambda v: v, torch.ones(1, 2), max_iter=-1)
