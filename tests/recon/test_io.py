from __future__ import annotations

import numpy as np
import pytest
import torch

from invseg.recon.io import estimate_coil_maps, read_fastmri_h5, write_fastmri_h5
from invseg.recon.operators import SenseOperator
from invseg.recon.simulate import birdcage_maps, cartesian_kt_mask, shepp_logan, simulate_kspace

h5py = pytest.importorskip("h5py", reason="fastMRI files are HDF5 (optional h5py)")


def test_reader_round_trip_and_coil_maps(tmp_path):
    S = birdcage_maps(4, 32)
    mask = cartesian_kt_mask(1, 32, 2.0, calib=10, seed=0)[0]  # (1, W)
    k = torch.stack([simulate_kspace(shepp_logan(32), S, mask) for _ in range(2)])  # (2,4,32,32)
    path = write_fastmri_h5(tmp_path / "file.h5", k.numpy(), mask=mask[0].numpy())
    data = read_fastmri_h5(path)
    assert torch.allclose(data["kspace"], k)
    assert data["mask"].shape == (1, 1, 1, 32)
    assert torch.equal(data["mask"][0, 0, 0], mask[0])
    maps = data["coil_maps"]
    assert maps.shape == k.shape
    # the estimate agrees with the true maps (up to a common phase) inside the object
    obj = shepp_logan(32) > 0
    c = (maps[0] * S.conj()).sum(0)
    assert (c.abs()[obj] > 0.9).float().mean() > 0.9
    op = SenseOperator(maps, data["mask"])
    assert op.A_adjoint(data["kspace"]).shape == (2, 1, 32, 32)


def test_reader_infers_mask_without_dataset(tmp_path):
    k = np.zeros((1, 2, 8, 8), np.complex64)
    k[..., ::2] = 1
    data = read_fastmri_h5(write_fastmri_h5(tmp_path / "a.h5", k))
    assert data["mask"].shape == (1, 1, 1, 8) and data["mask"].sum() == 4


def test_reader_rejects_bad_files(tmp_path):
    with h5py.File(tmp_path / "real.h5", "w") as f:
        f.create_dataset("kspace", data=np.ones((1, 2, 4, 4), np.float32))
    with pytest.raises(ValueError, match="complex"):
        read_fastmri_h5(tmp_path / "real.h5")
    with h5py.File(tmp_path / "none.h5", "w") as f:
        f.create_dataset("foo", data=np.ones(3))
    with pytest.raises(ValueError, match="no 'kspace'"):
        read_fastmri_h5(tmp_path / "none.h5")
    write_fastmri_h5(tmp_path / "m.h5", np.ones((1, 2, 4, 4), np.complex64), mask=np.ones(5))
    with pytest.raises(ValueError, match="does not fit"):
        read_fastmri_h5(tmp_path / "m.h5")


def test_estimate_coil_maps_rejects_real():
    with pytest.raises(TypeError):
        estimate_coil_maps(torch.ones(2, 4, 4))
