from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Invertd
from scipy import ndimage

from invseg.data import (
    case_dicts,
    eval_transforms,
    inference_transforms,
    make_dataset,
    synthesize,
    train_transforms,
)


def test_train_transforms_brats_crops(brats32):
    t = train_transforms(brats32.convention, crop=(16, 12, 8), num_samples=2)
    out = t(case_dicts(brats32.cases[:1])[0])
    assert isinstance(out, list) and len(out) == 2
    for item in out:
        assert tuple(item["image"].shape) == (4, 16, 12, 8)
        assert tuple(item["label"].shape) == (3, 16, 12, 8)
        assert set(torch.unique(item["label"]).tolist()) <= {0.0, 1.0}
        assert item["image"].dtype == torch.float32


def test_train_transforms_pad_small_volumes(iseg32):
    t = train_transforms("iseg", crop=(40, 36, 32), augment=False)
    item = t(case_dicts(iseg32.cases)[0])[0]
    assert tuple(item["image"].shape) == (2, 40, 36, 32)
    assert tuple(item["label"].shape) == (1, 40, 36, 32)
    assert set(torch.unique(item["label"]).tolist()) == {0.0, 1.0, 2.0, 3.0}


def test_eval_transforms_normalise_and_convert(brats32):
    item = eval_transforms("brats")(case_dicts(brats32.cases[:1])[0])
    img = item["image"]
    assert tuple(img.shape) == (4, 32, 32, 32) and tuple(item["label"].shape) == (3, 32, 32, 32)
    for c in range(4):  # NormalizeIntensity(nonzero, channel_wise): zero mean/unit std in the brain
        vals = img[c][img[c] != 0]
        assert abs(float(vals.mean())) < 1e-3 and abs(float(vals.std()) - 1) < 1e-2
    lab = np.asarray(nib.load(brats32.cases[0].label).dataobj)
    assert float(item["label"][1].sum()) == float(
        (lab > 0).sum()
    )  # WT voxels preserved (RAS, 1 mm)
    unlabeled = eval_transforms("brats")(case_dicts(brats32.cases[-1:])[0])
    assert "label" not in unlabeled and tuple(unlabeled["image"].shape) == (4, 32, 32, 32)


def test_msd_4d_file(tmp_path):
    info = synthesize("brats", tmp_path, cases=1, shape=(16, 16, 16), layout="msd")
    item = eval_transforms(info.convention)(case_dicts(info.cases)[0])
    assert tuple(item["image"].shape) == (4, 16, 16, 16) and tuple(item["label"].shape) == (
        3,
        16,
        16,
        16,
    )


def test_spacing_resamples(brats32):
    item = eval_transforms("brats", spacing=(2.0, 2.0, 2.0))(case_dicts(brats32.cases[:1])[0])
    assert tuple(item["image"].shape) == (4, 16, 16, 16)


@pytest.mark.parametrize("target_spacing", [(1.5, 0.8, 2.5), (1.0, 1.0, 1.0)])
def test_invertd_restores_non_ras_anisotropic_odd_geometry(tmp_path, target_spacing):
    info = synthesize(
        "brats", tmp_path, cases=1, shape=(21, 19, 17), orientation="LPI", spacing=(1.5, 0.8, 2.5)
    )
    src = nib.load(info.cases[0].images[0])
    assert nib.aff2axcodes(src.affine) == ("L", "P", "I")
    chain = inference_transforms(spacing=target_spacing)
    # One modality as a 1-channel input; the "prediction" is its brain mask.
    data = chain({"image": str(info.cases[0].images[0])})
    assert nib.aff2axcodes(data["image"].affine.numpy()) == ("R", "A", "S")
    fg = (data["image"] != 0).float()  # NormalizeIntensity(nonzero=True) keeps zeros at 0
    data["pred"] = MetaTensor(
        fg, meta=dict(data["image"].meta), applied_operations=list(data["image"].applied_operations)
    )
    inv = Invertd("pred", transform=chain, orig_keys="image", nearest_interp=False)(data)["pred"]
    assert tuple(inv.shape) == (1, *src.shape)
    assert np.allclose(inv.affine.numpy(), src.affine, atol=1e-5)
    back = inv[0].numpy() > 0.5
    truth = np.asarray(src.dataobj) > 0
    dice = 2 * (back & truth).sum() / (back.sum() + truth.sum())
    shift = np.subtract(ndimage.center_of_mass(back), ndimage.center_of_mass(truth))
    if target_spacing == (1.5, 0.8, 2.5):  # reorientation only: exact
        assert dice == 1.0
    else:  # resampled 2.5 mm -> 1 mm -> 2.5 mm: mask edges blur, but nothing flips or shifts
        assert dice > 0.9 and np.abs(shift).max() < 0.5


def test_make_dataset_caches_cases(iseg32):
    ds = make_dataset(iseg32.cases, eval_transforms("iseg"), cache_rate=1.0)
    assert len(ds) == 1 and tuple(ds[0]["label"].shape) == (1, 32, 32, 32)
    ds2 = make_dataset(case_dicts(iseg32.cases), eval_transforms("iseg"), cache_rate=0.0)
    assert torch.equal(ds2[0]["image"], ds[0]["image"])
    with pytest.raises(ValueError, match="cache_rate"):
        make_dataset(iseg32.cases, None, cache_rate=2.0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="crop"):
        train_transforms("brats", crop=(16, 16))
    with pytest.raises(ValueError, match="spacing"):
        inference_transforms(spacing=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="Did you mean 'msd'"):
        eval_transforms("mds")
