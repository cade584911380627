"""Segmentation networks on the coupling engine, with MONAI's argument conventions.

* :class:`InvertibleResBlock` — additive coupling of ``norm -> act -> conv`` units.
* :class:`UNet3D` — the non-invertible residual 3D U-Net baseline.
* :class:`PartiallyInvResUNet` — invertible residual stages in an ordinary U-Net frame.
* :class:`FullyInvResUNet` — one invertible body with invertible up/down-sampling.
* :class:`VAEBranch` — the VAE regulariser from the bottleneck back to the input.
* :func:`create` / :func:`list_models` — networks by name (:mod:`invseg.nets.registry`): what a
  checkpoint may name.
"""

from __future__ import annotations

from invseg.nets.fully import FullyInvResUNet, fully_invertible_channels
from invseg.nets.partially import PartiallyInvResUNet
from invseg.nets.registry import create, list_models
from invseg.nets.res_block import InvertibleResBlock, ResidualBlock
from invseg.nets.unet3d import UNet3D
from invseg.nets.vae import VAEBranch

__all__ = [
    "FullyInvResUNet",
    "InvertibleResBlock",
    "PartiallyInvResUNet",
    "ResidualBlock",
    "UNet3D",
    "VAEBranch",
    "create",
    "fully_invertible_channels",
    "list_models",
]
