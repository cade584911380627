"""Tiny on-disk datasets for the data-layer tests."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from invseg.data import synthesize


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    """Write ``data`` as NIfTI (``.nii`` or ``.nii.gz`` from the name), creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


def write_analyze(path: Path, data: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.AnalyzeImage(data, np.eye(4)), str(path))
    return path


@pytest.fixture
def volume() -> np.ndarray:
    return np.arange(8 * 8 * 8, dtype=np.float32).reshape(8, 8, 8)


@pytest.fixture(scope="session")
def brats32(tmp_path_factory: pytest.TempPathFactory):
    """A 2-case BraTS 2020 dataset, 32^3, plus one validation (unlabelled) case."""
    return synthesize(
        "brats", tmp_path_factory.mktemp("brats32"), cases=2, shape=(32, 32, 32), unlabeled=1
    )


@pytest.fixture(scope="session")
def iseg32(tmp_path_factory: pytest.TempPathFactory):
    return synthesize("iseg", tmp_path_factory.mktemp("iseg32"), cases=1, shape=(32, 32, 32))
