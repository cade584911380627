from __future__ import annotations

import pytest
import torch

from invseg.recon.fft import fftc, ifftc
from invseg.recon.operators import LinearOperator, SenseOperator
from invseg.recon.simulate import birdcage_maps, cartesian_kt_mask, poisson_disc_mask

C128 = torch.complex128


def _rand(*shape):
    g = torch.Generator().manual_seed(sum(shape))
    return torch.randn(*shape, dtype=C128, generator=g)


def _make(kind: str) -> SenseOperator:
    if kind == "2d":
        S = birdcage_maps(3, 16)[None].to(C128)
        return SenseOperator(S, poisson_disc_mask(16, 3.0, calib=4)[None, None])
    if kind == "3d":
        S = birdcage_maps(2, (8, 12, 16), ndim=3)[None].to(C128)
        m = poisson_disc_mask((12, 16), 3.0, calib=4)[None, None, None]  # ky-kz, readout D
        return SenseOperator(S, m)
    S = birdcage_maps(4, 16)[None, :, None].expand(1, 4, 5, 16, 16).to(C128)  # 2D+time
    m = cartesian_kt_mask(5, 16, 4.0, calib=2)[None, None]  # (1, 1, T, 1, W)
    return SenseOperator(S, m, fft_ndim=2)


@pytest.mark.parametrize("kind", ["2d", "3d", "2d+t"])
def test_adjointness_and_normal(kind):
    """The operator contract, over every LinearOperator implementation."""
    op = _make(kind)
    assert isinstance(op, LinearOperator)
    x, y = _rand(*op.image_shape), _rand(*op.kspace_shape)
    lhs = torch.vdot(op.A(x).flatten(), y.flatten())
    rhs = torch.vdot(x.flatten(), op.A_adjoint(y).flatten())
    assert torch.allclose(lhs, rhs, rtol=1e-12, atol=1e-12)
    assert torch.allclose(op.normal(x), op.A_adjoint(op.A(x)), atol=1e-12)


def test_operator_is_pure():
    op = _make("2d")
    maps, mask = op.coil_maps.clone(), op.mask.clone()
    op.A(_rand(*op.image_shape))
    assert torch.equal(op.coil_maps, maps) and torch.equal(op.mask, mask)


def test_cine_frames_are_independent_2d_ffts():
    op = _make("2d+t")
    x = _rand(*op.image_shape)
    y = op.A(x)
    t = 2
    Sx_t = op.coil_maps[:, :, t] * x[:, :, t]
    expected = op.mask.expand(op.kspace_shape)[:, :, t] * fftc(Sx_t, 2)
    assert torch.allclose(y[:, :, t], expected, atol=1e-12)


@pytest.mark.parametrize("ndim", [2, 3])
def test_fftc_is_orthonormal_and_centred(ndim):
    x = _rand(2, *(6,) * ndim)
    k = fftc(x, ndim)
    assert torch.allclose(k.norm(), x.norm())
    assert torch.allclose(ifftc(k, ndim), x, atol=1e-12)
    dc = fftc(torch.ones((6,) * ndim, dtype=C128), ndim)  # DC lands in the centre
    assert dc.abs().argmax().item() == sum(3 * 6**i for i in range(ndim))


def test_fftc_rejects_real_input():
    with pytest.raises(TypeError, match="complex"):
        fftc(torch.ones(4, 4))


def test_mask_shape_mismatch_raises():
    S = birdcage_maps(2, 8)[None]
    with pytest.raises(ValueError, match="does not broadcast"):
        SenseOperator(S, torch.ones(1, 1, 8, 7))


def test_non_complex_coil_maps_raise():
    with pytest.raises(TypeError, match="complex"):
        SenseOperator(torch.ones(1, 2, 8, 8), torch.ones(1, 1, 8, 8))


def test_kspace_shape_mismatch_raises():
    op = SenseOperator(birdcage_maps(2, 8)[None], torch.ones(1, 1, 1, 8))
    with pytest.raises(ValueError, match="expects"):
        op.A_adjoint(torch.ones(1, 3, 8, 8, dtype=torch.complex64))
    with pytest.raises(ValueError, match="expects"):
        op.A(torch.ones(1, 2, 8, 8, dtype=torch.complex64))  # coil dim instead of 1


def test_non_complex_kspace_raises():
    op = SenseOperator(birdcage_maps(2, 8)[None], torch.ones(1, 1, 1, 8))
    with pytest.raises(TypeError, match="complex"):
        op.A_adjoint(torch.ones(1, 2, 8, 8))


def test_complex_mask_raises():
    with pytest.raises(TypeError, match="real"):
        SenseOperator(birdcage_maps(2, 8)[None], torch.ones(1, 1, 1, 8, dtype=torch.complex64))
