"""On-disk dataset layouts: one :class:`Layout` object per layout, found through one registry.

============  =====================================================================  ===========
layout        files                                                                  labels
============  =====================================================================  ===========
brats2020     ``BraTS20_Training_001/BraTS20_Training_001_{t1,t1ce,t2,flair,seg}``     0/1/2/4
brats2021     ``BraTS2021_00000/BraTS2021_00000_{t1,t1ce,t2,flair,seg}``               0/1/2/4
brats2023     ``BraTS-GLI-00000-000/BraTS-GLI-00000-000-{t1n,t1c,t2w,t2f,seg}``        0/1/2/3
msd           ``dataset.json``, ``imagesTr/BRATS_001`` (4-D), ``labelsTr/BRATS_001``   0/1/2/3
nnunet        ``dataset.json``, ``imagesTr/CASE_0000``..., ``labelsTr/CASE``           from json
iseg          ``subject-1-{T1,T2,label}.hdr/.img`` (Analyze 7.5)                       0/10/150/250
============  =====================================================================  ===========

Each :class:`Layout` knows how to detect itself and list its cases (:meth:`Layout.discover`),
read its file names (:meth:`Layout.match_file`), its label convention
(:meth:`Layout.label_convention`) and where and how a prediction is written
(:meth:`Layout.prediction_path`, :meth:`Layout.write_prediction`). :data:`LAYOUTS` maps names to
layouts in detection order; :func:`get_layout` looks one up, :func:`register_layout` adds one.

Images may be ``.nii.gz`` or ``.nii`` (iSeg also ``.hdr/.img``). Cases without a label file
(BraTS validation folders, ``imagesTs``, iSeg test subjects) are prediction-only
(``label=None``). The BraTS modality order is fixed to ``t1, t1ce, t2, flair`` (2023+:
``t1n, t1c, t2w, t2f``) whatever order the files are listed in.

Example:
    >>> from pathlib import Path
    >>> from invseg.data.layouts import LAYOUTS, get_layout
    >>> list(LAYOUTS)
    ['msd', 'nnunet', 'brats2020', 'brats2021', 'brats2023', 'iseg']
    >>> get_layout("brats2023").prediction_path(Path("out"), "BraTS-GLI-00000-000").name
    'BraTS-GLI-00000-000.nii.gz'
"""

from __future__ import annotations

from invseg.data.layouts.base import FileMatch, Layout, check_unique, write_nifti
from invseg.data.layouts.decathlon import convention_from_dataset_json
from invseg.data.layouts.discover import cases_from_paths, discover, iter_cases
from invseg.data.layouts.registry import (
    LAYOUTS,
    get_layout,
    iter_layouts,
    match_file,
    register_layout,
)

__all__ = [
    "LAYOUTS",
    "FileMatch",
    "Layout",
    "cases_from_paths",
    "check_unique",
    "convention_from_dataset_json",
    "discover",
    "get_layout",
    "iter_cases",
    "iter_layouts",
    "match_file",
    "register_layout",
    "write_nifti",
]
