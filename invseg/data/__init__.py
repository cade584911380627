"""Data layer: dataset discovery, label conventions, MONAI transform chains, synthetic datasets.

The public names below are the data contract used by the training and prediction workflows.
"""

from __future__ import annotations

from invseg.data.case import Case, DatasetInfo, case_dicts
from invseg.data.check import check_case, check_cases, read_image
from invseg.data.conventions import CONVENTIONS, LabelConvention, get_convention
from invseg.data.dataset import make_dataset
from invseg.data.errors import DataError
from invseg.data.label_transforms import (
    ConvertToTarget,
    ConvertToTargetd,
    ToNativeLabels,
    ToNativeLabelsd,
)
from invseg.data.layouts import (
    LAYOUTS,
    Layout,
    cases_from_paths,
    convention_from_dataset_json,
    discover,
    get_layout,
    iter_cases,
)
from invseg.data.synth import synthesize
from invseg.data.transforms import eval_transforms, inference_transforms, train_transforms

__all__ = [
    "CONVENTIONS",
    "LAYOUTS",
    "Case",
    "ConvertToTarget",
    "ConvertToTargetd",
    "DataError",
    "DatasetInfo",
    "LabelConvention",
    "Layout",
    "ToNativeLabels",
    "ToNativeLabelsd",
    "case_dicts",
    "cases_from_paths",
    "check_case",
    "check_cases",
    "convention_from_dataset_json",
    "discover",
    "eval_transforms",
    "get_convention",
    "get_layout",
    "inference_transforms",
    "iter_cases",
    "make_dataset",
    "read_image",
    "synthesize",
    "train_transforms",
]
