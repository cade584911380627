"""Synthetic iSeg in nnU-Net v2's raw layout, and invseg's reader of that layout reading it back."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from invseg.data import case_dicts, discover, eval_transforms, synthesize
from invseg.data.synth import held_out_folder

SHAPE = (16, 16, 16)


def rel_files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _array(path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """The same two labelled cases (seed 3) in iSeg's and nnU-Net's layouts; nnU-Net's also
    holds one unlabelled case and one held-out case."""
    root = tmp_path_factory.mktemp("iseg_pair")
    kw = {"cases": 2, "shape": SHAPE, "seed": 3}
    iseg = synthesize("iseg", root / "iseg", **kw)
    nnunet = synthesize("iseg", root / "nnunet", layout="nnunet", unlabeled=1, test_cases=1, **kw)
    return iseg, nnunet


def test_synth_iseg_nnunet_writes_nnunets_raw_layout(pair) -> None:
    _, info = pair
    cases = (("Tr", 1), ("Tr", 2), ("Ts", 3))
    files = [f"images{s}/iSeg_00{i}_000{c}.nii.gz" for s, i in cases for c in (0, 1)]
    labels = ["labelsTr/iSeg_001.nii.gz", "labelsTr/iSeg_002.nii.gz"]
    assert rel_files(info.root) == sorted(["dataset.json", *files, *labels])
    assert json.loads((info.root / "dataset.json").read_text()) == {
        "name": "iSegSynth",
        "channel_names": {"0": "T1", "1": "T2"},
        "labels": {"background": 0, "CSF": 1, "GM": 2, "WM": 3},
        "numTraining": 2,
        "file_ending": ".nii.gz",
    }
    held = held_out_folder(info.root)
    assert rel_files(held) == sorted(
        ["dataset.json", "imagesTr/iSeg_004_0000.nii.gz", "imagesTr/iSeg_004_0001.nii.gz",
         "labelsTr/iSeg_004.nii.gz"]
    )  # fmt: skip
    assert json.loads((held / "dataset.json").read_text())["numTraining"] == 1


def test_invseg_discovers_the_cases_channels_and_labels_of_iseg_nnunet(pair) -> None:
    _, info = pair
    assert discover(info.root) == info
    assert info.layout == "nnunet" and info.modalities == ("T1", "T2")
    assert [(c.case_id, c.has_label) for c in info.cases] == [
        ("iSeg_001", True), ("iSeg_002", True), ("iSeg_003", False)
    ]  # fmt: skip
    assert [p.name for p in info.cases[0].images] == [
        "iSeg_001_0000.nii.gz",
        "iSeg_001_0001.nii.gz",
    ]
    conv = info.convention
    assert (conv.kind, conv.activation, conv.out_channels) == ("classes", "softmax", 4)
    assert conv.names == ("background", "CSF", "GM", "WM") and conv.class_values == (0, 1, 2, 3)


def test_iseg_nnunet_holds_the_iseg_cases_voxel_for_voxel(pair) -> None:
    iseg, nnunet = pair
    for a, b in zip(iseg.cases, nnunet.cases[:2], strict=True):
        for x, y in zip(a.images, b.images, strict=True):  # T1, T2
            assert np.array_equal(_array(x)[..., 0], _array(y))
        native, ours = _array(a.label)[..., 0], _array(b.label)
        assert ours.dtype == np.uint8 and set(np.unique(ours).tolist()) == {0, 1, 2, 3}
        for value, index in ((0, 0), (10, 1), (150, 2), (250, 3)):
            assert np.array_equal(native == value, ours == index)
        image = nib.load(b.images[0])
        assert image.header.get_zooms() == (1.0, 1.0, 1.0)
        np.testing.assert_allclose(nib.load(b.label).affine, image.affine)


def test_invsegs_eval_chain_reads_both_iseg_layouts_alike(pair) -> None:
    iseg, nnunet = pair
    a = eval_transforms(iseg.convention)(case_dicts(iseg.cases)[1])
    b = eval_transforms(nnunet.convention)(case_dicts(nnunet.cases)[1])
    assert a["image"].shape == b["image"].shape == (2, *SHAPE)
    # Analyze stores no orientation: nibabel reads iSeg's files as LAS, the NIfTI files are RAS,
    # so the chain (oriented to RAS) mirrors the iSeg arrays along x and keeps nnU-Net's
    flip = (slice(None), slice(None, None, -1))
    np.testing.assert_allclose(np.asarray(a["image"])[flip], np.asarray(b["image"]), atol=1e-6)
    assert np.array_equal(np.asarray(a["label"])[flip], np.asarray(b["label"]))  # classes 0..3
    assert set(np.unique(np.asarray(b["label"])).tolist()) == {0.0, 1.0, 2.0, 3.0}


def test_iseg_nnunet_is_stored_in_the_requested_orientation(tmp_path) -> None:
    kw = {"cases": 1, "shape": SHAPE, "layout": "nnunet", "compress": False}
    ras = synthesize("iseg", tmp_path / "ras", **kw).cases[0]
    lps = synthesize("iseg", tmp_path / "lps", orientation="LPS", **kw).cases[0]
    assert lps.label.name == "iSeg_001.nii"
    assert nib.aff2axcodes(nib.load(lps.label).affine) == ("L", "P", "S")
    for x, y in zip((*ras.images, ras.label), (*lps.images, lps.label), strict=True):
        assert np.array_equal(_array(x)[::-1, ::-1], _array(y))


def test_cli_synth_iseg_nnunet_and_the_layouts_iseg_refuses(tmp_path, capsys) -> None:
    from invseg.cli import main

    argv = ["data", "synth", "--kind", "iseg", "--layout", "nnunet", "--cases", "1"]
    assert main([*argv, "--shape", "16", "16", "16", "-o", str(tmp_path / "cli")]) == 0
    assert "wrote 1 easy nnunet cases" in capsys.readouterr().out
    assert discover(tmp_path / "cli").modalities == ("T1", "T2")
    with pytest.raises(ValueError, match=r"layout for iseg.*'iseg', 'nnunet'"):
        synthesize("iseg", tmp_path / "msd", layout="msd")
