from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose

from invseg.data import (
    CONVENTIONS,
    ConvertToTargetd,
    DataError,
    LabelConvention,
    ToNativeLabelsd,
    get_convention,
)


def random_label(conv: LabelConvention, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.choice(np.asarray(conv.native_values, dtype=np.uint8), size=(1, 6, 5, 4))


@pytest.mark.parametrize("name", list(CONVENTIONS))
@pytest.mark.parametrize("as_tensor", [False, True])
def test_native_target_native_round_trip(name, as_tensor):
    conv = get_convention(name)
    label = random_label(conv)
    x = torch.as_tensor(label) if as_tensor else label
    target = conv.to_target(x)
    assert isinstance(target, torch.Tensor) == as_tensor
    expected_c = conv.out_channels if conv.kind == "regions" else 1
    assert tuple(target.shape) == (expected_c, 6, 5, 4)
    assert target.dtype in (np.float32, torch.float32)
    if conv.kind == "classes":  # probabilities from the class index (one-hot)
        target = torch.nn.functional.one_hot(torch.as_tensor(target[0]).long(), 4).movedim(-1, 0)
        target = target.numpy() if not as_tensor else target
    native = conv.to_native(target)
    assert np.array_equal(np.asarray(native), label)
    assert np.asarray(native).dtype == np.uint8


@pytest.mark.parametrize(
    ("name", "value", "tc_wt_et"),
    [
        ("brats", 1, (1, 1, 0)),
        ("brats", 2, (0, 1, 0)),
        ("brats", 4, (1, 1, 1)),
        ("brats2023", 3, (1, 1, 1)),
        ("msd", 1, (0, 1, 0)),  # MSD: 1 = edema
        ("msd", 2, (1, 1, 0)),  # 2 = non-enhancing tumour
        ("msd", 3, (1, 1, 1)),  # 3 = enhancing tumour
    ],
)
def test_region_membership(name, value, tc_wt_et):
    t = get_convention(name).to_target(np.full((1, 1, 1, 1), value, np.uint8))
    assert tuple(int(v) for v in t.ravel()) == tc_wt_et


def test_iseg_class_indices():
    t = get_convention("iseg").to_target(np.array([0, 10, 150, 250], np.uint8).reshape(1, 4, 1, 1))
    assert t.ravel().tolist() == [0.0, 1.0, 2.0, 3.0]


def test_to_native_paints_nested_regions_from_probabilities():
    # voxels: WT only, TC+WT, ET alone (outside WT), all below threshold
    p = torch.tensor([[0.1, 0.8, 0.2, 0.4], [0.7, 0.9, 0.3, 0.4], [0.0, 0.1, 0.6, 0.4]])
    p = p.reshape(3, 4, 1, 1)
    assert get_convention("brats").to_native(p).ravel().tolist() == [2, 1, 4, 0]
    assert get_convention("msd").to_native(p).ravel().tolist() == [1, 2, 3, 0]
    assert get_convention("brats2023").to_native(p, threshold=0.35).ravel().tolist() == [2, 1, 3, 3]


def test_to_native_accepts_class_index_channel():
    idx = torch.tensor([3.0, 0.0, 2.0]).reshape(1, 3, 1, 1)
    assert get_convention("iseg").to_native(idx).ravel().tolist() == [250, 0, 150]


def test_wrong_channel_count_and_values():
    with pytest.raises(ValueError, match="need 3 channels"):
        get_convention("brats").to_native(torch.zeros(4, 2, 2, 2))
    with pytest.raises(DataError, match=r"label values \[4\] are not part of the 'msd'"):
        get_convention("msd").to_target(np.full((1, 2, 2, 2), 4, np.uint8))
    m = MetaTensor(torch.full((1, 2, 2, 2), 3), meta={"filename_or_obj": "/x/seg.nii.gz"})
    with pytest.raises(DataError, match=r"^/x/seg.nii.gz: label values \[3\]"):
        get_convention("brats").to_target(m)


def test_get_convention_names_and_did_you_mean():
    assert get_convention("brats2020") is get_convention("brats2021") is CONVENTIONS["brats"]
    with pytest.raises(ValueError, match="Did you mean 'iseg'"):
        get_convention("isge")
    conv = get_convention("msd")
    assert get_convention(conv) is conv


@pytest.mark.parametrize("name", list(CONVENTIONS))
def test_dict_round_trip(name):
    conv = CONVENTIONS[name]
    assert LabelConvention.from_dict(conv.as_dict()) == conv
    assert get_convention(conv.as_dict()) == conv


def test_map_transforms_in_compose_keep_metadata():
    label = MetaTensor(
        torch.tensor(random_label(CONVENTIONS["brats"])),
        affine=torch.diag(torch.tensor([2.0, 1, 1, 1])),
    )
    chain = Compose([ConvertToTargetd("label", "brats"), ToNativeLabelsd("label", "brats")])
    out = chain({"label": label})["label"]
    assert torch.equal(out.as_tensor(), label.as_tensor().to(torch.uint8))
    assert isinstance(out, MetaTensor) and out.affine[0, 0] == 2.0
    mid = ConvertToTargetd("label", "iseg")({"label": MetaTensor(torch.zeros(1, 2, 2, 2))})["label"]
    assert isinstance(mid, MetaTensor)
