from __future__ import annotations

from pathlib import Path

from invseg.data import Case, case_dicts, iter_cases


def test_case_dicts_single_and_multi_file():
    a = Case("a", (Path("a_t1.nii.gz"), Path("a_t2.nii.gz")), Path("a_seg.nii.gz"))
    b = Case("b", (Path("b.nii.gz"),), None)
    assert case_dicts([a, b]) == [
        {"image": ["a_t1.nii.gz", "a_t2.nii.gz"], "case_id": "a", "label": "a_seg.nii.gz"},
        {"image": "b.nii.gz", "case_id": "b"},
    ]


def test_iter_cases_filters_by_label(brats32):
    assert [c.case_id for c in iter_cases(brats32, labelled=True)] == [
        "BraTS20_Training_001",
        "BraTS20_Training_002",
    ]
    assert [c.case_id for c in iter_cases(brats32.root, labelled=False)] == [
        "BraTS20_Validation_001"
    ]
    assert len(list(iter_cases(brats32.cases))) == 3
