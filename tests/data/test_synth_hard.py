"""The hard synthetic preset: documented label statistics, and no intensity-threshold shortcut."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from invseg.data import synthesize
from invseg.data.synth import NATIVE_SHAPES, flair_threshold_dice, label_statistics, summarize

SHAPE = (40, 40, 32)


@pytest.fixture(scope="module")
def hard_brats(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("hard_brats")
    return synthesize("brats", root, cases=16, shape=SHAPE, seed=0, preset="hard")


@pytest.fixture(scope="module")
def easy_brats(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("easy_brats")
    return synthesize("brats", root, cases=4, shape=SHAPE, seed=0, preset="easy")


def test_hard_brats_label_statistics_lie_in_the_documented_ranges(hard_brats) -> None:
    stats = label_statistics(hard_brats)
    summary = summarize(stats)
    assert len(stats) == 16
    assert stats["lesions"].between(1, 3).all()
    assert stats["wt_fraction"].between(0.0015, 0.07).all()  # docs: about 0.3-6% of the brain
    assert 0.1 <= summary["multifocal"] <= 0.6  # docs: about a third
    assert 0.05 <= summary["et_empty"] <= 0.45  # docs: about a fifth
    assert stats["tc_share"].between(0.0, 0.9).all() and summary["tc_share_median"] > 0.15


def test_easy_brats_is_one_lesion_with_enhancement(easy_brats) -> None:
    stats = label_statistics(easy_brats)
    assert (stats["lesions"] == 1).all() and not stats["et_empty"].any()
    assert stats["wt_fraction"].min() > 0.01


def test_flair_threshold_solves_easy_but_not_hard_whole_tumour(hard_brats, easy_brats) -> None:
    easy = flair_threshold_dice(easy_brats)
    hard = flair_threshold_dice(hard_brats)
    assert easy.min() > 0.85
    assert hard.mean() < 0.6 and np.median(hard) < 0.6


def test_hard_brats_t1ce_has_bright_look_alikes_outside_the_tumour(hard_brats) -> None:
    counts = []
    for case in hard_brats.cases:
        t1ce = np.asarray(nib.load(case.images[1]).dataobj).astype(float)
        label = np.asarray(nib.load(case.label).dataobj)
        if (label == 4).any():  # voxels outside the tumour brighter than the median ET voxel
            counts.append(int((t1ce[label == 0] > np.median(t1ce[label == 4])).sum()))
    assert len(counts) >= 8
    assert np.median(counts) > 20, counts  # a T1ce threshold takes look-alikes for enhancement


def test_hard_iseg_is_isointense_and_easy_is_not(tmp_path) -> None:
    hard = label_statistics(synthesize("iseg", tmp_path / "h", cases=3, shape=SHAPE, preset="hard"))
    easy = label_statistics(synthesize("iseg", tmp_path / "e", cases=1, shape=SHAPE))
    assert hard["t1_wm_gm_contrast"].abs().max() < 0.1
    assert hard["t2_wm_gm_contrast"].abs().max() < 0.12
    assert easy["t1_wm_gm_contrast"].min() > 0.2 and easy["t2_wm_gm_contrast"].max() < -0.15


def test_hard_preset_is_deterministic_and_differs_from_easy(tmp_path) -> None:
    kw = {"cases": 1, "shape": (24, 24, 20), "seed": 5}
    a = synthesize("brats", tmp_path / "a", preset="hard", **kw)
    b = synthesize("brats", tmp_path / "b", preset="hard", **kw)
    c = synthesize("brats", tmp_path / "c", preset="easy", **kw)
    arr = [np.asarray(nib.load(i.cases[0].images[3]).dataobj) for i in (a, b, c)]
    assert np.array_equal(arr[0], arr[1]) and not np.array_equal(arr[0], arr[2])


def test_native_geometry_keeps_1mm_voxels_and_a_background_margin(tmp_path, monkeypatch):
    assert NATIVE_SHAPES == {"brats": (240, 240, 155), "iseg": (144, 192, 256)}
    monkeypatch.setitem(NATIVE_SHAPES, "brats", (48, 40, 36))  # small stand-in, same code path
    info = synthesize("brats", tmp_path, cases=1, shape="native", preset="hard")
    img = nib.load(info.cases[0].images[0])
    data = np.asarray(img.dataobj)
    assert data.shape == (48, 40, 36) and np.allclose(img.header.get_zooms(), 1.0)
    assert (data[:2] == 0).all() and (data[-2:] == 0).all()  # brain centred, not stretched


def test_preset_and_native_shape_errors(tmp_path) -> None:
    with pytest.raises(ValueError, match="Did you mean 'hard'"):
        synthesize("brats", tmp_path, preset="hadr")
    with pytest.raises(ValueError, match="'native'"):
        synthesize("brats", tmp_path, shape="nativ")


def test_cli_synth_flags() -> None:
    from invseg.cli import build_parser

    args = build_parser().parse_args(
        ["data", "synth", "--kind", "iseg", "-o", "d", "--preset", "hard", "--native"]
    )
    assert (args.preset, args.native, str(args.output)) == ("hard", True, "d")
    with pytest.raises(SystemExit):
        build_parser().parse_args(
            ["data", "synth", "--kind", "iseg", "-o", "d", "--native", "--shape", "1", "2", "3"]
        )


def test_medium_keeps_hard_lesions_with_clearer_contrast(tmp_path, hard_brats) -> None:
    medium = synthesize("brats", tmp_path, cases=8, shape=SHAPE, seed=0, preset="medium")
    stats = label_statistics(medium)
    assert stats["lesions"].between(1, 3).all()
    assert stats["wt_fraction"].between(0.0015, 0.07).all()
    flair_medium = flair_threshold_dice(medium)
    flair_hard = flair_threshold_dice(hard_brats)
    assert flair_medium.mean() > flair_hard.mean() + 0.1  # easier than hard ...
    assert flair_medium.mean() < 0.92  # ... and not a threshold task like easy


def test_medium_iseg_contrast_lies_between_isointense_and_adult(tmp_path) -> None:
    kw = {"cases": 2, "shape": SHAPE, "preset": "medium"}
    stats = label_statistics(synthesize("iseg", tmp_path, **kw))
    assert stats["t1_wm_gm_contrast"].between(0.02, 0.15).all()
    assert stats["t2_wm_gm_contrast"].between(-0.18, -0.02).all()
