"""A BraTS-like nnU-Net v2 3d_fullres configuration at a size the tests run in seconds."""

from __future__ import annotations

import copy
import pydoc
from typing import Any

import pytest
import torch

#: The architecture entry of a real nnU-Net v2 3d_fullres BraTS plan (PlainConvUNet, 4
#: modalities, isotropic 1 mm), shrunk to 3 stages of (8, 16, 32) features.
ARCHITECTURE: dict[str, Any] = {
    "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
    "arch_kwargs": {
        "n_stages": 3,
        "features_per_stage": [8, 16, 32],
        "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": [[3, 3, 3], [3, 3, 3], [3, 3, 3]],
        "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
        "n_conv_per_stage": [2, 2, 2],
        "n_conv_per_stage_decoder": [2, 2],
        "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
        "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    },
    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
}
IN_CHANNELS, REGIONS = 4, 3  # BraTS: 4 modalities, 3 regions (WT, TC, ET)


def arch_kwargs(**changes: Any) -> dict[str, Any]:
    """The plans' ``arch_kwargs`` with ``changes``, ops imported as nnU-Net imports them."""
    kwargs = copy.deepcopy(ARCHITECTURE["arch_kwargs"]) | changes
    for key in ARCHITECTURE["_kw_requires_import"]:
        if isinstance(kwargs[key], str):
            kwargs[key] = pydoc.locate(kwargs[key])
    return kwargs


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
