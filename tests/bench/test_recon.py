from __future__ import annotations

import pytest

from invseg.bench import recon


def test_presets_meet_the_quality_protocol():
    for cfg in recon.PRESETS.values():
        assert cfg["val"] >= 8 and cfg["seeds"] >= 2


@pytest.mark.parametrize(("per_voxel", "fixed", "expected"), [(1024.0, 0.0, 192), (2**40, 0, 0)])
def test_largest_depth_fits_12_gib(per_voxel, fixed, expected):
    depth = recon._largest(per_voxel, fixed, 256 * 256)
    assert depth == expected
    assert depth * per_voxel * 256 * 256 + fixed <= recon.GIB12
