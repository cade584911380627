"""MRI reconstruction: SENSE operators, conjugate gradient, MoDL trained with MEL.

Modules: :mod:`~invseg.recon.fft` (centred FFTs), :mod:`~invseg.recon.operators`
(:class:`SenseOperator`), :mod:`~invseg.recon.cg`, :mod:`~invseg.recon.denoiser`,
:mod:`~invseg.recon.modl`, :mod:`~invseg.recon.baselines`, :mod:`~invseg.recon.simulate`,
:mod:`~invseg.recon.transforms` (MONAI), :mod:`~invseg.recon.io` (fastMRI HDF5),
:mod:`~invseg.recon.metrics`.
"""

from __future__ import annotations

from invseg.recon.baselines import cg_sense, zero_filled
from invseg.recon.cg import CGInfo, conjugate_gradient
from invseg.recon.denoiser import ResidualDenoiser
from invseg.recon.fft import fftc, ifftc
from invseg.recon.modl import DataConsistency, MoDL, MoDLUnroll
from invseg.recon.operators import SenseOperator

__all__ = [
    "CGInfo",
    "DataConsistency",
    "MoDL",
    "MoDLUnroll",
    "ResidualDenoiser",
    "SenseOperator",
    "cg_sense",
    "conjugate_gradient",
    "fftc",
    "ifftc",
    "zero_filled",
]
