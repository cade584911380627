from __future__ import annotations

import gzip
import threading
from pathlib import Path

import numpy as np
import pytest

from invseg.data import Case, DataError, check_case, check_cases, get_convention
from tests.data.conftest import write_nifti


def make_case(root: Path, n: int = 2, ext: str = ".nii.gz", shape=(6, 6, 6)) -> Case:
    images = tuple(
        write_nifti(root / f"c_{m}{ext}", np.ones(shape, np.float32)) for m in ("t1", "t2")[:n]
    )
    label = write_nifti(root / f"c_seg{ext}", np.zeros(shape, np.uint8))
    return Case("c", images, label)


def check_message(err: pytest.ExceptionInfo, path: Path, reason: str) -> None:
    text = str(err.value)
    assert text.startswith(f"{path}: "), text
    assert reason in text and "\n" not in text


def test_good_case_passes(tmp_path):
    case = make_case(tmp_path)
    label = np.zeros((6, 6, 6), np.uint8)
    label[1:3, 1:3, 1:3], label[3, 3, 3], label[4, 4, 4] = 2, 1, 4  # every BraTS value once
    write_nifti(case.label, label)
    assert check_case(case, in_channels=2) is None
    assert check_case(case, in_channels=2, convention=get_convention("brats")) is None
    # the same files fail as soon as one thing is off: the checks above did run
    with pytest.raises(DataError, match="but the model expects 3"):
        check_case(case, in_channels=3)
    with pytest.raises(DataError, match=r"label values \[4\] are not part of the 'brats2023'"):
        check_case(case, in_channels=2, convention=get_convention("brats2023"))


def test_corrupt_header(tmp_path):
    case = make_case(tmp_path)
    case.images[1].write_bytes(gzip.compress(b"not a nifti at all" * 30))
    with pytest.raises(DataError) as err:
        check_case(case, in_channels=2)
    check_message(err, case.images[1], "unreadable image header")


@pytest.mark.parametrize("ext", [".nii.gz", ".nii"])
def test_truncated_file(tmp_path, ext):
    case = make_case(tmp_path, ext=ext, shape=(20, 20, 20))
    raw = case.images[0].read_bytes()
    case.images[0].write_bytes(raw[: len(raw) * 2 // 3])
    with pytest.raises(DataError) as err:
        check_case(case, in_channels=2)
    check_message(err, case.images[0], "truncated")


def test_missing_modality_file(tmp_path):
    case = make_case(tmp_path)
    case.images[1].unlink()
    with pytest.raises(DataError) as err:
        check_case(case, in_channels=2)
    check_message(err, case.images[1], "file is missing")


def test_shape_mismatch(tmp_path):
    case = make_case(tmp_path)
    write_nifti(case.images[1], np.ones((6, 6, 5), np.float32))
    with pytest.raises(DataError) as err:
        check_case(case, in_channels=2)
    check_message(err, case.images[1], "shape (6, 6, 5) differs from c_t1.nii.gz (6, 6, 6)")


def test_label_shape_mismatch(tmp_path):
    case = make_case(tmp_path)
    write_nifti(case.label, np.zeros((7, 6, 6), np.uint8))
    with pytest.raises(DataError) as err:
        check_case(case, in_channels=2)
    check_message(err, case.label, "shape (7, 6, 6)")


def test_affine_mismatch(tmp_path):
    case = make_case(tmp_path)
    write_nifti(case.images[1], np.ones((6, 6, 6), np.float32), np.diag([2.0, 1, 1, 1]))
    with pytest.raises(DataError) as err:
        check_case(case, in_channels=2)
    check_message(err, case.images[1], "affine differs")


def test_nan_voxels(tmp_path):
    case = make_case(tmp_path)
    data = np.ones((6, 6, 6), np.float32)
    data[0, 0, :3] = np.nan
    write_nifti(case.images[0], data)
    with pytest.raises(DataError) as err:
        check_case(case, in_channels=2)
    check_message(err, case.images[0], "contains 3 NaN voxels")


def test_wrong_channel_count(tmp_path):
    case = make_case(tmp_path)
    with pytest.raises(DataError) as err:
        check_case(case, in_channels=4)
    check_message(err, case.images[0], "has 2 channels (t1, t2 files) but the model expects 4")


def test_4d_file_channels(tmp_path):
    img = write_nifti(tmp_path / "x.nii.gz", np.ones((5, 5, 5, 4), np.float32))
    check_case(Case("x", (img,), None), in_channels=4)
    with pytest.raises(DataError, match="has 4 channels"):
        check_case(Case("x", (img,), None), in_channels=1)


def test_label_values_against_convention(tmp_path):
    case = make_case(tmp_path)
    write_nifti(case.label, np.full((6, 6, 6), 3, np.uint8))
    with pytest.raises(DataError) as err:
        check_case(case, in_channels=2, convention=get_convention("brats"))
    check_message(err, case.label, "label values [3]")


def test_in_channels_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="in_channels"):
        check_case(make_case(tmp_path), in_channels=0)


def make_cases(root: Path, n: int) -> list[Case]:
    cases = []
    for k in range(n):
        folder = root / f"c{k}"
        folder.mkdir()
        case = make_case(folder)
        cases.append(Case(f"c{k}", case.images, case.label))
    return cases


@pytest.mark.parametrize("workers", [1, 3])
def test_check_cases_raises_the_first_broken_case_in_order(tmp_path, workers):
    cases = make_cases(tmp_path, 5)
    write_nifti(cases[1].images[1], np.ones((6, 6, 5), np.float32))
    cases[3].images[0].write_bytes(b"garbage")
    with pytest.raises(DataError) as err:
        check_cases(cases, in_channels=2, workers=workers)
    check_message(err, cases[1].images[1], "shape (6, 6, 5) differs")
    assert not [t for t in threading.enumerate() if t.name.startswith("invseg-check")]
    with pytest.raises(DataError) as err:
        check_cases(cases[2:], in_channels=2, workers=workers)
    check_message(err, cases[3].images[0], "unreadable image header")


def test_check_cases_checks_label_values_of_every_case(tmp_path):
    cases = make_cases(tmp_path, 3)
    assert check_cases(cases, in_channels=2, convention=get_convention("brats")) is None
    write_nifti(cases[2].label, np.full((6, 6, 6), 3, np.uint8))
    with pytest.raises(DataError) as err:
        check_cases(cases, in_channels=2, convention=get_convention("brats"), workers=2)
    check_message(err, cases[2].label, "label values [3]")


def test_check_cases_in_channels_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="in_channels"):
        check_cases(make_cases(tmp_path, 1), in_channels=0)


def test_in_channels_none_skips_only_the_channel_count(tmp_path):
    case = make_case(tmp_path)
    assert check_case(case, in_channels=None) is None  # 2 channels, no model count to match
    write_nifti(case.images[1], np.ones((6, 6, 5), np.float32))
    with pytest.raises(DataError) as err:
        check_cases([case], in_channels=None)
    check_message(err, case.images[1], "shape (6, 6, 5) differs")
