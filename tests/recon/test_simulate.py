from __future__ import annotations

import pytest
import torch

from invseg.recon.simulate import add_complex_noise, beating_phantom, birdcage_maps, shepp_logan
from invseg.recon.transforms import SimulateKSpace, SimulateKSpaced


def test_birdcage_maps_are_rss_normalised_2d_3d():
    for S in (birdcage_maps(4, 12), birdcage_maps(4, (6, 8, 8), ndim=3)):
        assert torch.allclose((S.abs() ** 2).sum(0), torch.ones(S.shape[1:]), atol=1e-5)
        assert not torch.allclose(S[0], S[1])


def test_phantoms():
    p = shepp_logan(32)
    assert p.max() == 1.0 and p.min() == 0.0
    v = beating_phantom(8, 16)
    assert v.shape == (8, 16, 16) and not torch.equal(v[0], v[2])


def test_noise_level_and_seed():
    k = torch.zeros(200, 200, dtype=torch.complex64)
    n = add_complex_noise(k, 0.5, seed=1)
    assert abs(n.abs().square().mean().sqrt().item() - 0.5) < 0.01
    assert torch.equal(n, add_complex_noise(k, 0.5, seed=1))


@pytest.mark.parametrize(
    ("shape", "mask_type", "mask_shape"),
    [
        ((1, 16, 16), "poisson", (1, 16, 16)),
        ((1, 4, 12, 12), "poisson", (1, 1, 12, 12)),
        ((1, 4, 16, 16), "kt", (1, 4, 1, 16)),
    ],
)
def test_simulate_kspace_transform(shape, mask_type, mask_shape):
    torch.manual_seed(0)
    t = SimulateKSpace(3, 3.0, mask_type=mask_type, calib=4, seed=0)
    k, m, S = t(torch.rand(*shape))
    assert k.shape == S.shape == (3, *shape[1:]) and m.shape == mask_shape
    assert bool((k[(m.expand(k.shape) == 0)] == 0).all())
    _, m2, _ = SimulateKSpace(3, 3.0, mask_type=mask_type, calib=4, seed=0)(torch.rand(*shape))
    assert torch.equal(m, m2)


def test_dict_transform_and_bad_mask_type():
    d = SimulateKSpaced("img", num_coils=2, acceleration=2.0, seed=1)({"img": torch.ones(1, 8, 8)})
    assert {"img", "kspace", "mask", "coil_maps"} <= set(d)
    with pytest.raises(ValueError, match="did you mean 'poisson'"):
        SimulateKSpace(mask_type="poison")
