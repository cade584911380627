from __future__ import annotations

import pytest
import torch

from invseg.recon.denoiser import ResidualDenoiser, channels_to_complex, complex_to_channels


def _x(*shape, seed=0):
    return torch.randn(
        *shape, dtype=torch.complex128, generator=torch.Generator().manual_seed(seed)
    )


@pytest.mark.parametrize("spatial", [(16, 16), (4, 8, 8)])
def test_fixed_point_inverse_round_trip(spatial):
    torch.manual_seed(0)
    R = ResidualDenoiser(len(spatial), channels=8, layers=3).double()
    x = _x(2, 1, *spatial)
    assert torch.allclose(R.inverse(R(x), max_iter=500, tol=1e-14), x, atol=1e-10)


def test_lipschitz_bound_holds_on_random_pairs_and_power_iteration():
    torch.manual_seed(0)
    R = ResidualDenoiser(2, channels=8, layers=4, lipschitz=0.9).double()
    # scale up the weights: the normalisation must keep f contractive anyway
    with torch.no_grad():
        for p in R.parameters():
            p.mul_(10)
    R.update_spectral_norm(50)
    assert R.lipschitz_bound() <= 0.9 * (1 + 1e-6)
    f = R.residual
    ratios = []
    for s in range(20):
        a, b = _x(1, 1, 16, 16, seed=s), _x(1, 1, 16, 16, seed=100 + s)
        b = a + 1e-2 * b
        ratios.append(((f(a) - f(b)).norm() / (a - b).norm()).item())
    assert max(ratios) < 0.9
    # power iteration on the Jacobian of f at a point: largest singular value < 0.9
    a = _x(1, 1, 16, 16, seed=7)
    v = _x(1, 1, 16, 16, seed=8)
    v = v / v.norm()
    for _ in range(30):
        _, Jv = torch.autograd.functional.jvp(f, a, v)
        _, JtJv = torch.autograd.functional.vjp(f, a, Jv)
        sigma2 = JtJv.norm()
        v = JtJv / sigma2
    assert sigma2.sqrt().item() < 0.9


def test_forward_is_pure_in_training_mode():
    R = ResidualDenoiser(2, channels=4, layers=2).double().train()
    x = _x(1, 1, 8, 8)
    assert torch.equal(R(x), R(x))


def test_complex_channel_round_trip():
    z = _x(2, 1, 4, 4)
    assert torch.equal(channels_to_complex(complex_to_channels(z)), z)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"lipschitz": 1.0}, "lipschitz"), ({"layers": 1}, "layers"), ({"act": "relux"}, "relu")],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ResidualDenoiser(2, 4, **kwargs)


def test_wrong_input_raises():
    R = ResidualDenoiser(2, 4, 2)
    with pytest.raises(TypeError, match="complex"):
        R(torch.ones(1, 1, 4, 4))
    with pytest.raises(ValueError, match="spatial"):
        R(torch.ones(1, 1, 4, 4, 4, dtype=torch.complex64))


@pytest.mark.parametrize("spatial", [(12, 12), (6, 8, 8)])
def test_certified_norm_of_each_conv_is_tight_and_holds(spatial):
    """Power iteration on the actual conv (zero padding) stays below and near the bound."""
    torch.manual_seed(0)
    R = ResidualDenoiser(len(spatial), channels=6, layers=2, lipschitz=0.81).double()
    conv = R._convs()[0]
    w = conv.weight().detach()
    fn = torch.nn.functional.conv2d if len(spatial) == 2 else torch.nn.functional.conv3d
    v = torch.randn(1, 2, *spatial, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for _ in range(300):
        u = fn(v, w, padding=1)
        v = (
            torch.nn.grad.conv2d_input(v.shape, w, u, padding=1)
            if len(spatial) == 2
            else (torch.nn.grad.conv3d_input(v.shape, w, u, padding=1))
        )
        v = v / v.norm()
    sigma = fn(v, w, padding=1).norm().item()
    assert sigma <= conv.certified_norm() <= 0.9 * (1 + 1e-6)  # gain = sqrt(0.81)
    assert sigma >= 0.9 / conv.margin * 0.85  # tight: no sqrt(K) slack


def test_gram_bound_is_an_upper_bound_and_tight():
    from invseg.recon.denoiser import gram_bound

    m = torch.randn(64, 16, 16, dtype=torch.complex128, generator=torch.Generator().manual_seed(0))
    ratio = gram_bound(m) / torch.linalg.svdvals(m)[:, 0]
    assert ratio.min() >= 1 - 1e-12
    assert ratio.max() <= 16 ** (1 / 128) + 1e-12  # rank^(1/2^(J+1)) with J = 6


def _top_singular_value(w: torch.Tensor, size: int) -> float:
    d = w.dim() - 2
    k = torch.fft.fftn(w, s=(size,) * d, dim=tuple(range(2, 2 + d)))
    return torch.linalg.svdvals(k.permute(*range(2, 2 + d), 0, 1))[..., 0].max().item()


@pytest.mark.parametrize("grid", [16, 24, 32])
def test_grid_margin_bounds_the_norm_between_grid_points(grid):
    """A kernel whose response peaks half-way between grid frequencies needs the margin, and the
    margin covers it; so do random 3D kernels against a 4x finer grid."""
    import math

    from invseg.recon.denoiser import grid_margin

    a = math.pi / grid  # taps e^{i a n} as 2x2 rotations: |K(w)| peaks at w = a, off the grid
    w = torch.zeros(2, 2, 3, dtype=torch.float64)
    for n in range(3):
        c, s = math.cos(a * n), math.sin(a * n)
        w[:, :, n] = torch.tensor([[c, -s], [s, c]])
    ratio = _top_singular_value(w, 64 * grid) / _top_singular_value(w, grid)
    assert 1.002 < ratio <= grid_margin((grid,))
    gen = torch.Generator().manual_seed(grid)
    for _ in range(5):
        w = torch.randn(3, 3, 3, 3, 3, dtype=torch.float64, generator=gen)
        ratio = _top_singular_value(w, 4 * grid) / _top_singular_value(w, grid)
        assert 1.0 <= ratio <= grid_margin((grid,) * 3)
