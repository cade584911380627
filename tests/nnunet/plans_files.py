"""A hand-written nnU-Net v2 preprocessed folder: plans and dataset.json as nnU-Net writes them.

Modelled on what ``ExperimentPlanner.plan_experiment`` saves for a BraTS dataset (4 MRI
channels, 3 regions, 1 mm isotropic): ``2d``, ``3d_fullres`` and a ``3d_cascade_fullres`` that
inherits from ``3d_fullres``, plus an anisotropic ``3d_lowres`` such as thick-slice data gets.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

RESAMPLING = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}


def _configuration(identifier: str, patch: list, median: list, arch: dict) -> dict[str, Any]:
    return {
        "data_identifier": identifier,
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2,
        "patch_size": patch,
        "median_image_size_in_voxels": median,
        "spacing": [1.0, 1.0, 1.0],
        "normalization_schemes": ["ZScoreNormalization"] * 4,
        "use_mask_for_norm": [True] * 4,
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": RESAMPLING,
        "resampling_fn_seg_kwargs": RESAMPLING | {"is_seg": True, "order": 1},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": RESAMPLING | {"order": 1},
        "architecture": arch,
        "batch_dice": False,
    }


def architecture(stages: int, features: list, *, dims: int = 3, strides: list | None = None):
    """nnU-Net's PlainConvUNet architecture entry with ``stages`` isotropic stages."""
    conv = f"torch.nn.modules.conv.Conv{dims}d"
    norm = f"torch.nn.modules.instancenorm.InstanceNorm{dims}d"
    return {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {
            "n_stages": stages,
            "features_per_stage": features,
            "conv_op": conv,
            "kernel_sizes": [[3] * dims] * stages,
            "strides": strides or [[1] * dims] + [[2] * dims] * (stages - 1),
            "n_conv_per_stage": [2] * stages,
            "n_conv_per_stage_decoder": [2] * (stages - 1),
            "conv_bias": True,
            "norm_op": norm,
            "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }


def brats_plans(*, fullres: dict | None = None, patch=None, median=None) -> dict[str, Any]:
    """nnUNetPlans.json of a BraTS-like dataset; ``3d_fullres`` by default a real-size one.

    Its 112-voxel axis is pooled 4 times, not 5 (nnU-Net keeps feature maps >= 4 voxels), so
    its last stride is ``[2, 2, 1]``, as in nnU-Net's plans for BraTS 2021.
    """
    brats = [[1, 1, 1]] + [[2, 2, 2]] * 4 + [[2, 2, 1]]
    fullres = fullres or architecture(6, [32, 64, 128, 256, 320, 320], strides=brats)
    lowres_strides = [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]]
    return {
        "dataset_name": "Dataset137_BraTS2021",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [1.0, 1.0, 1.0],
        "original_median_shape_after_transp": [140, 171, 137],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {
            "2d": _configuration(
                "nnUNetPlans_2d",
                [192, 160],
                [171, 137],
                architecture(6, [32, 64, 128, 256, 512, 512], dims=2),
            ),
            "3d_fullres": _configuration(
                "nnUNetPlans_3d_fullres",
                patch or [128, 160, 112],
                median or [140.0, 171.0, 137.0],
                fullres,
            ),
            "3d_lowres": _configuration(
                "nnUNetPlans_3d_lowres",
                [64, 96, 80],
                [70, 171, 137],
                architecture(4, [32, 64, 128, 256], strides=lowres_strides),
            ),
            "3d_cascade_fullres": {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"},
        },
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            str(c): {
                "max": 9.0,
                "mean": 1.0,
                "median": 0.9,
                "min": -1.0,
                "percentile_00_5": -0.5,
                "percentile_99_5": 5.0,
                "std": 0.8,
            }
            for c in range(4)
        },
    }


BRATS_DATASET = {
    "channel_names": {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"},
    "labels": {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3],
               "enhancing tumor": [3]},
    "regions_class_order": [1, 2, 3],
    "numTraining": 1251,
    "file_ending": ".nii.gz",
}  # fmt: skip


def write_dataset(root: Path, plans: dict | None = None, name: str = "Dataset137_BraTS2021"):
    """``root/name`` with ``nnUNetPlans.json`` and ``dataset.json``; returns the folder."""
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "nnUNetPlans.json").write_text(json.dumps(plans or brats_plans(), indent=4))
    (folder / "dataset.json").write_text(json.dumps(copy.deepcopy(BRATS_DATASET), indent=4))
    return folder
