"""The one segmentation scorer: BraTS rules for empty masks, mm, and one score everywhere."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch

from invseg.commands.evaluate import evaluate
from invseg.data import get_convention
from invseg.runtime.device import Amp
from invseg.runtime.distributed import DistInfo
from invseg.tasks.seg_data import validation_metrics
from invseg.tasks.seg_metrics import (
    EMPTY_DISTANCE,
    logit_masks,
    region_names,
    score_case,
    target_masks,
)

ALL = ("hd95", "asd", "mhd")


def _cube(start: tuple[int, int, int], size: int = 4, shape=(10, 10, 10)) -> torch.Tensor:
    m = torch.zeros(1, *shape)
    m[(0, *(slice(s, s + size) for s in start))] = 1
    return m


def test_empty_distance_is_the_brats_volume_diagonal() -> None:
    assert round(math.dist((0, 0, 0), (240, 240, 155)), 2) == EMPTY_DISTANCE == 373.13


@pytest.mark.parametrize(
    ("pred_empty", "ref_empty", "dice", "distance"),
    [
        (True, True, 1.0, 0.0),
        (True, False, 0.0, EMPTY_DISTANCE),
        (False, True, 0.0, EMPTY_DISTANCE),
        (False, False, 1.0, 0.0),
    ],
)
def test_empty_masks_follow_the_brats_rule_for_dice_and_every_distance(
    pred_empty: bool, ref_empty: bool, dice: float, distance: float
) -> None:
    cube = _cube((3, 3, 3))
    pred = torch.zeros_like(cube) if pred_empty else cube
    ref = torch.zeros_like(cube) if ref_empty else cube
    out = score_case(pred, ref, ["X"], spacing=(1.0, 1.0, 1.0), distances=ALL)
    assert out == {"dice_X": dice, "hd95_X": distance, "asd_X": distance, "mhd_X": distance}


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_distances_are_in_mm_at_the_spacing(axis: int) -> None:
    spacing = (2.0, 1.0, 1.5)
    ref = _cube((3, 3, 3))
    pred = torch.roll(ref, 1, dims=1 + axis)  # one voxel along `axis`: overlap 48 of 64
    out = score_case(pred, ref, ["X"], spacing=spacing, distances=ALL)
    assert out["dice_X"] == pytest.approx(0.75)
    assert out["hd95_X"] == pytest.approx(spacing[axis])
    assert 0 < out["asd_X"] < out["hd95_X"] and out["mhd_X"] >= out["asd_X"]


def test_columns_are_every_dice_then_the_distances_per_name() -> None:
    masks = torch.cat([_cube((1, 1, 1)), _cube((5, 5, 5))])
    keys = list(score_case(masks, masks, ["A", "B"], spacing=(1, 1, 1), distances=ALL))
    assert keys == ["dice_A", "dice_B", "hd95_A", "asd_A", "mhd_A", "hd95_B", "asd_B", "mhd_B"]


def test_bad_arguments_say_what_is_wrong() -> None:
    masks = _cube((1, 1, 1))
    with pytest.raises(ValueError, match=r"C = len\(names\) = 2"):
        score_case(masks, masks, ["A", "B"], spacing=(1, 1, 1))
    with pytest.raises(ValueError, match=r"one shape"):
        score_case(masks, masks[:, :5], ["A"], spacing=(1, 1, 1))
    with pytest.raises(ValueError, match="Did you mean 'hd95'"):
        score_case(masks, masks, ["A"], spacing=(1, 1, 1), distances=("hd96",))


def test_masks_of_targets_and_logits() -> None:
    iseg, brats = get_convention("iseg"), get_convention("brats")
    indices = torch.tensor([0.0, 1.0, 2.0, 3.0, 3.0]).reshape(1, 1, 1, 5)
    expected = [[0, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 0, 1, 1]]  # CSF, GM, WM
    assert target_masks(indices, iseg)[:, 0, 0].tolist() == expected
    logits = torch.nn.functional.one_hot(indices[0].long(), 4).movedim(-1, 0).float()
    assert logit_masks(3 * logits - 1, iseg)[:, 0, 0].tolist() == expected
    z = torch.tensor([-1.0, 0.0, 0.5]).reshape(1, 1, 1, 3).expand(3, -1, -1, -1)
    assert logit_masks(z, brats)[:, 0, 0].tolist() == [[0, 0, 1]] * 3  # sigmoid(z) > 0.5
    assert region_names(brats) == ("TC", "WT", "ET")


# ---------------------------------------------------- validation == invseg evaluate

SHAPE = (12, 12, 12)
AFFINE = np.diag([2.0, 1.0, 1.5, 1.0])


def _labels(*blocks: tuple[int, tuple[int, int, int], int]) -> np.ndarray:
    """A native label map painted with ``(value, start, size)`` cubes, in order."""
    a = np.zeros(SHAPE, np.uint8)
    for value, start, size in blocks:
        a[tuple(slice(s, s + size) for s in start)] = value
    return a


#: (prediction, reference) native label maps: a case with every region, one with empty ones.
CASES = {
    "brats": {
        "normal": (
            _labels((2, (2, 2, 2), 7), (1, (4, 4, 4), 3), (4, (5, 5, 5), 2)),
            _labels((2, (3, 2, 2), 7), (1, (4, 4, 5), 3), (4, (5, 5, 6), 2)),
        ),
        # reference edema only: predicted TC against an empty one, ET empty in both
        "empty": (_labels((2, (2, 2, 2), 6), (1, (4, 4, 4), 2)), _labels((2, (3, 3, 2), 6))),
    },
    "iseg": {
        "normal": (
            _labels((10, (1, 1, 1), 4), (150, (6, 6, 6), 4), (250, (1, 7, 1), 3)),
            _labels((10, (1, 1, 2), 4), (150, (7, 6, 6), 4), (250, (1, 7, 2), 3)),
        ),
        # reference without WM and GM: predicted WM against an empty one, GM empty in both
        "empty": (_labels((10, (1, 1, 1), 4), (250, (6, 6, 6), 3)), _labels((10, (2, 1, 1), 4))),
    },
}


class _Lookup(torch.nn.Module):
    """Returns the logits of case ``k`` for an image filled with ``k``."""

    def __init__(self, logits: list[torch.Tensor]) -> None:
        super().__init__()
        self.z = torch.stack(logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.z[x[:, 0, 0, 0, 0].long()]


def _logits(native: np.ndarray, conv) -> torch.Tensor:
    """Logits whose discretisation is ``native``: +-20 per region, or one-hot classes."""
    target = torch.as_tensor(conv.to_target(native[None]))
    if conv.kind == "classes":
        target = torch.nn.functional.one_hot(target[0].long(), conv.out_channels).movedim(-1, 0)
    return torch.where(target > 0, 20.0, -20.0)


def _validate(conv, cases: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    data = SimpleNamespace(
        convention=conv,
        info=DistInfo(),
        spacing=[2.0, 1.0, 1.5],
        val_ds=[
            {"image": torch.full((1, *SHAPE), float(k)), "label": conv.to_target(ref[None])}
            for k, (_, ref) in enumerate(cases)
        ],
    )
    model = _Lookup([_logits(pred, conv) for pred, _ in cases])
    amp = Amp(torch.device("cpu"), False)
    return validation_metrics(model, data, amp, roi_size=list(SHAPE), sw_batch_size=1, overlap=0.0)


@pytest.mark.parametrize("labels", ["brats", "iseg"])
def test_validation_scores_a_case_as_invseg_evaluate_does(tmp_path: Path, labels: str) -> None:
    conv = get_convention(labels)
    for case, (pred, ref) in CASES[labels].items():
        for folder, native in (("pred", pred), ("ref", ref)):
            (tmp_path / folder).mkdir(exist_ok=True)
            nib.save(nib.Nifti1Image(native, AFFINE), str(tmp_path / folder / f"{case}.nii.gz"))
    df = evaluate(tmp_path / "pred", tmp_path / "ref", labels=labels).set_index("case_id")
    names = region_names(conv)
    keys = [f"{m}_{n}" for n in names for m in ("dice", "hd95")]
    for case, pair in CASES[labels].items():
        val = _validate(conv, [pair])
        assert [val[k] for k in keys] == [float(df.loc[case, k]) for k in keys], case
    empty = df.loc["empty"]
    one, both = ("TC", "ET") if labels == "brats" else ("WM", "GM")
    assert (empty[f"dice_{one}"], empty[f"hd95_{one}"]) == (0.0, EMPTY_DISTANCE)
    assert (empty[f"dice_{both}"], empty[f"hd95_{both}"]) == (1.0, 0.0)
    assert 0 < df.loc["normal", f"dice_{one}"] < 1 and 0 < df.loc["normal", f"hd95_{one}"] < 10
    val = _validate(conv, list(CASES[labels].values()))  # the mean over both cases
    assert [val[k] for k in keys] == pytest.approx([df.loc["mean", k] for k in keys], rel=1e-12)
    dice_means = [df.loc["mean", f"dice_{n}"] for n in names]
    assert val["dice_mean"] == pytest.approx(np.mean(dice_means), rel=1e-12)
