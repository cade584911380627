"""MRI reconstruction: SENSE operators, conjugate gradient, MoDL trained with MEL.

Modules: :mod:`~invseg.recon.fft` (centred FFTs), :mod:`~invseg.recon.operators`
(:class:`LinearOperator`, :class:`SenseOperator`), :mod:`~invseg.recon.cg`,
:mod:`~invseg.recon.dc` (data consistency), :mod:`~invseg.recon.denoiser`,
:mod:`~invseg.recon.modl`, :mod:`~invseg.recon.baselines`, :mod:`~invseg.recon.simulate`
(phantoms, coil maps, k-space), :mod:`~invseg.recon.masks` (sampling masks),
:mod:`~invseg.recon.transforms` (MONAI), :mod:`~invseg.recon.io` (fastMRI HDF5),
:mod:`~invseg.recon.metrics`.
"""

from __future__ import annotations

from invseg.recon.anchors import anchor_spacing
from invseg.recon.baselines import cg_sense, zero_filled
from invseg.recon.cg import CGInfo, conjugate_gradient
from invseg.recon.dc import DataConsistency, dc_solve
from invseg.recon.denoiser import ResidualDenoiser
from invseg.recon.fft import fftc, ifftc
from invseg.recon.modl import MoDL, MoDLUnroll
from invseg.recon.operators import LinearOperator, SenseOperator

__all__ = [
    "CGInfo",
    "DataConsistency",
    "LinearOperator",
    "MoDL",
    "MoDLUnroll",
    "ResidualDenoiser",
    "SenseOperator",
    "anchor_spacing",
    "cg_sense",
    "conjugate_gradient",
    "dc_solve",
    "fftc",
    "ifftc",
    "zero_filled",
]
