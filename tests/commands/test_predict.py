"""Prediction workflow: geometry round trip, per-case failures, no overwritten inputs."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from invseg.commands.predict import predict


def _case_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir())


def test_predict_writes_native_labels_for_a_dataset(trained_run: Path, brats_tiny, tmp_path):
    out = tmp_path / "pred"
    failures = predict(
        trained_run / "best.pt", [brats_tiny.root], out, save_probabilities=True, tta=True
    )
    assert failures == 0
    for case in brats_tiny.cases:
        img = nib.load(out / f"{case.case_id}.nii.gz")
        ref = nib.load(case.images[0])
        assert img.get_data_dtype() == np.uint8
        assert img.shape == ref.shape
        np.testing.assert_allclose(img.affine, ref.affine, atol=1e-5)
        assert set(np.unique(np.asarray(img.dataobj))) <= {0, 1, 2, 4}
        probs = nib.load(out / "probabilities" / f"{case.case_id}.nii.gz")
        assert probs.shape == (*ref.shape, 3)
        p = np.asarray(probs.dataobj)
        assert p.min() >= 0.0 and p.max() <= 1.0
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]


@pytest.mark.slow
def test_non_ras_anisotropic_odd_input_round_trips_geometry(trained_run: Path, tmp_path):
    from invseg.data import synthesize

    shape, spacing = (35, 33, 31), (1.2, 0.9, 1.5)
    ras = synthesize("brats", tmp_path / "ras", cases=1, shape=shape, spacing=spacing, seed=5)
    lps = synthesize(
        "brats", tmp_path / "lps", cases=1, shape=shape, spacing=spacing, seed=5, orientation="LPS"
    )
    outs = {}
    for name, info in (("ras", ras), ("lps", lps)):
        assert predict(trained_run / "last.pt", [info.root], tmp_path / f"out_{name}") == 0
        case = info.cases[0]
        ref = nib.load(case.images[0])
        got = nib.load(tmp_path / f"out_{name}" / f"{case.case_id}.nii.gz")
        assert got.shape == ref.shape
        np.testing.assert_allclose(got.affine, ref.affine, atol=1e-5)
        assert nib.aff2axcodes(got.affine) == nib.aff2axcodes(ref.affine)
        outs[name] = nib.as_closest_canonical(got)
    # same anatomy stored in two orientations -> the same labels in world space
    assert nib.aff2axcodes(nib.load(lps.cases[0].images[0]).affine) == ("L", "P", "S")
    np.testing.assert_allclose(outs["ras"].affine, outs["lps"].affine, atol=1e-4)
    a, b = np.asarray(outs["ras"].dataobj), np.asarray(outs["lps"].dataobj)
    assert (a == b).mean() > 0.99


def _break(case_dir: Path, how: str, tmp_path: Path) -> Path:
    files = sorted(case_dir.glob("*.nii.gz"))
    images = [f for f in files if not f.name.endswith("_seg.nii.gz")]
    target = images[1]
    if how == "corrupt":
        data = target.read_bytes()
        target.write_bytes(data[: len(data) // 2])
    elif how == "missing":
        target.unlink()
    elif how == "shape":
        img = nib.load(target)
        nib.save(nib.Nifti1Image(np.zeros((30, 32, 32), np.float32), img.affine), target)
    elif how == "nan":
        img = nib.load(target)
        arr = np.asarray(img.dataobj, dtype=np.float32)
        arr[3, 3, 3] = np.nan
        nib.save(nib.Nifti1Image(arr, img.affine), target)
    elif how == "channels":  # one 4-D file with 2 channels instead of 4 modalities
        img = nib.load(images[0])
        arr = np.stack([np.asarray(img.dataobj, dtype=np.float32)] * 2, axis=-1)
        path = tmp_path / "twochannel.nii.gz"
        nib.save(nib.Nifti1Image(arr, img.affine), path)
        return path
    return case_dir


def _copy_case(src: Path, case_id: str, dest: Path) -> Path:
    out = dest / case_id
    out.mkdir(parents=True)
    for f in src.iterdir():
        shutil.copyfile(f, out / f.name.replace(src.name, case_id))
    return out


@pytest.mark.slow
def test_each_bad_case_fails_alone_and_leaves_no_file(trained_run, brats_tiny, tmp_path, capsys):
    good = _case_dirs(brats_tiny.root)[0]
    kinds = ["corrupt", "missing", "shape", "nan", "channels"]
    inputs = [good]
    for k, how in enumerate(kinds):
        case_dir = _copy_case(good, f"BraTS20_Training_{101 + k}", tmp_path / "data")
        inputs.append(_break(case_dir, how, tmp_path))
    out = tmp_path / "pred"
    failures = predict(trained_run / "last.pt", inputs, out)
    err = [line for line in capsys.readouterr().err.splitlines() if "error: " in line]
    assert failures == len(kinds) == len(err)
    for k, how in enumerate(kinds[:-1]):
        assert sum(f"BraTS20_Training_{101 + k}" in line for line in err) == 1, how
    assert any("twochannel" in line and "channel" in line for line in err)
    assert sorted(p.name for p in out.iterdir()) == [f"{good.name}.nii.gz"]


def test_output_folder_holding_inputs_is_refused(trained_run, brats_tiny, tmp_path):
    case_dir = _case_dirs(brats_tiny.root)[0]
    with pytest.raises(ValueError, match="holds input images"):
        predict(trained_run / "last.pt", [case_dir], case_dir)


def test_unknown_device_gets_did_you_mean(trained_run, brats_tiny, tmp_path):
    with pytest.raises(ValueError, match="Did you mean 'cpu'"):
        predict(trained_run / "last.pt", [brats_tiny.root], tmp_path / "o", device="cpux")


def test_not_a_checkpoint_is_a_clear_error(brats_tiny, tmp_path):
    bogus = tmp_path / "model.pt"
    with gzip.open(bogus, "wb") as f:
        f.write(b"not a checkpoint")
    with pytest.raises(ValueError, match="model.pt: not a readable checkpoint"):
        predict(bogus, [brats_tiny.root], tmp_path / "o")


# ------------------------------------------------------------------ fast tests (no training)
def _conv_checkpoint(
    path: Path,
    convention: str = "brats",
    bias: tuple = (5.0, 5.0, 5.0),
    modalities: tuple = ("t1", "t1ce", "t2", "flair"),
) -> Path:
    """A one-level UNet3D checkpoint whose outputs are constant (BraTS: every region present)."""
    import torch

    from invseg.nets import UNet3D
    from invseg.runtime.checkpoint import save_checkpoint

    kwargs = {"in_channels": len(modalities), "out_channels": len(bias), "channels": [2],
              "norm": ["group", {"num_groups": 1}]}  # fmt: skip
    net = UNet3D(**kwargs)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        net.head.bias.copy_(torch.tensor(bias))
    meta = {
        "target": "invseg.nets.UNet3D",
        "kwargs": kwargs,
        "convention": convention,
        "modalities": list(modalities),
        "spacing": [1.0, 1.0, 1.0],
        "roi_size": [16, 16, 16],
        "sw_batch_size": 1,
        "overlap": 0.0,
        "amp": False,
    }
    return save_checkpoint({"model": net.state_dict(), "meta": meta}, path)


@pytest.fixture(scope="module")
def small_sets(tmp_path_factory):
    from invseg.data import synthesize

    root = tmp_path_factory.mktemp("small")
    return {
        layout: synthesize("brats", root / layout, cases=2, shape=(20, 18, 16), layout=layout)
        for layout in ("brats2020", "brats2023")
    }


@pytest.mark.parametrize(("layout", "et"), [("brats2020", 4), ("brats2023", 3)])
def test_output_labels_follow_the_input_layout(small_sets, tmp_path, capsys, layout, et):
    ckpt = _conv_checkpoint(tmp_path / "m.pt")  # trained on BraTS 2020 numbering (ET=4)
    out = tmp_path / "pred"
    assert predict(ckpt, [small_sets[layout].root], out) == 0
    assert f"ET={et}" in capsys.readouterr().out
    for case in small_sets[layout].cases:
        values = np.unique(np.asarray(nib.load(out / f"{case.case_id}.nii.gz").dataobj))
        assert values.tolist() == [et]  # every voxel enhancing: the ET value of the layout


def test_labels_flag_overrides_the_layout(small_sets, tmp_path, capsys):
    ckpt = _conv_checkpoint(tmp_path / "m.pt")
    out = tmp_path / "pred"
    assert predict(ckpt, [small_sets["brats2023"].root], out, labels="brats") == 0
    assert "labels brats (0/1/2/4, ET=4) from --labels" in capsys.readouterr().out
    case = small_sets["brats2023"].cases[0]
    assert np.unique(np.asarray(nib.load(out / f"{case.case_id}.nii.gz").dataobj)).tolist() == [4]
    with pytest.raises(ValueError, match="--labels iseg"):
        predict(ckpt, [small_sets["brats2023"].root], out, labels="iseg")


def test_rerun_says_how_many_it_replaced_or_skips_them(small_sets, tmp_path, capsys):
    ckpt = _conv_checkpoint(tmp_path / "m.pt")
    out = tmp_path / "pred"
    root = small_sets["brats2020"].root
    assert predict(ckpt, [root], out) == 0
    assert "replaced" not in capsys.readouterr().out
    first = out / f"{small_sets['brats2020'].cases[0].case_id}.nii.gz"
    first.unlink()
    assert predict(ckpt, [root], out) == 0
    assert "wrote 2 of 2 cases" in capsys.readouterr().out.splitlines()[-1]
    assert predict(ckpt, [root], out) == 0
    assert "(replaced 2 earlier results)" in capsys.readouterr().out
    before = {p: p.stat().st_mtime_ns for p in out.glob("*.nii.gz")}
    first.unlink()
    assert predict(ckpt, [root], out, skip_existing=True) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert "wrote 1 of 2 cases" in last and "skipped 1 with an existing result" in last
    assert {p: p.stat().st_mtime_ns for p in out.glob("*.nii.gz") if p != first} == {
        p: t for p, t in before.items() if p != first
    }


def test_unwritable_output_fails_before_inference(small_sets, tmp_path, monkeypatch):
    import invseg.commands.predict as mod

    ckpt = _conv_checkpoint(tmp_path / "m.pt")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    calls = []
    monkeypatch.setattr(mod, "load_model", lambda *a, **k: calls.append(a))
    with pytest.raises(ValueError, match=r"output folder is not writable .*choose another") as err:
        predict(ckpt, [small_sets["brats2020"].root], blocker / "out")
    assert "\n" not in str(err.value) and calls == []


def test_case_missing_a_modality_names_the_case_and_file(small_sets, tmp_path, capsys):
    src = small_sets["brats2020"]
    data = tmp_path / "data"
    shutil.copytree(src.root, data)
    broken = src.cases[1].case_id
    (data / broken / f"{broken}_t1ce.nii.gz").unlink()
    out = tmp_path / "pred"
    assert predict(_conv_checkpoint(tmp_path / "m.pt"), [data], out) == 1
    captured = capsys.readouterr()
    err = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert len(err) == 1 and broken in err[0] and f"{broken}_t1ce.nii.gz" in err[0]
    assert "wrote 1 of 2 cases" in captured.out and "(1 failed)" in captured.out
    assert sorted(p.name for p in out.iterdir()) == [f"{src.cases[0].case_id}.nii.gz"]


def test_tta_flips_probabilities_back_on_a_non_cubic_volume():
    import torch

    from invseg.commands.predict import predict_probabilities

    torch.manual_seed(0)
    net = torch.nn.Conv3d(2, 3, 1)  # pointwise: equivariant to every flip
    x = torch.randn(1, 2, 7, 5, 4)
    kw = {"roi_size": (8, 8, 8), "overlap": 0.0}
    plain = predict_probabilities(net, x, **kw)
    with torch.no_grad():
        expected = torch.sigmoid(net(x))
    torch.testing.assert_close(plain, expected, atol=1e-6, rtol=0)
    for activation in ("sigmoid", "softmax"):
        a = predict_probabilities(net, x, activation=activation, **kw)
        b = predict_probabilities(net, x, activation=activation, tta=True, **kw)
        torch.testing.assert_close(b, a, atol=1e-6, rtol=0)


def test_checkpoint_pickling_an_object_is_refused_without_running_it(tmp_path):
    import torch

    from invseg.commands.predict import load_model

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    bad = tmp_path / "evil.pt"
    torch.save({"model": {}, "meta": {"target": "x", "kwargs": {}}, "x": Payload()}, bad)
    with pytest.raises(ValueError, match="refused: the file pickles Python objects") as err:
        load_model(bad)
    assert not marker.exists()
    assert "weights_only=False" not in str(err.value)


@pytest.mark.parametrize("orientation", ["RAS", "LPS"])
def test_labels_land_on_the_input_voxels_of_a_non_cubic_volume(tmp_path, orientation):
    """Fast guard against transposed/flipped labels: ET exactly where the T1 is bright."""
    import torch

    from invseg.data import synthesize

    spacing = (1.2, 0.9, 1.5)
    info = synthesize(
        "brats",
        tmp_path / "d",
        cases=1,
        shape=(22, 18, 16),
        spacing=spacing,
        seed=3,
        orientation=orientation,
    )
    ckpt = _conv_checkpoint(tmp_path / "m.pt", bias=(0.0, 0.0, 0.0))
    state = torch.load(ckpt, weights_only=True)
    conv = torch.nn.Conv3d(4, 3, 1)  # a class outside the registry: the user names it
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        conv.weight[:, 0] = 1.0  # logits = normalised T1 in every region
    state["model"] = conv.state_dict()
    state["meta"]["target"] = "torch.nn.Conv3d"
    state["meta"]["kwargs"] = {"in_channels": 4, "out_channels": 3, "kernel_size": 1}
    state["meta"]["spacing"] = list(spacing)  # no resampling: the voxels map one to one
    torch.save(state, ckpt)
    assert predict(ckpt, [info.root], tmp_path / "out", model_class="torch.nn.Conv3d") == 0
    case = info.cases[0]
    got = np.asarray(nib.load(tmp_path / "out" / f"{case.case_id}.nii.gz").dataobj)
    t1 = np.asarray(nib.load(case.images[0]).dataobj, dtype=np.float64)
    expected = np.where((t1 == 0) | (t1 >= t1[t1 != 0].mean()), 4, 0)
    assert 0.1 < (expected == 4).mean() < 0.9
    assert (got == expected).mean() > 0.999


def test_cli_labels_and_skip_existing(small_sets, tmp_path, capsys):
    from invseg.cli import main

    ckpt = _conv_checkpoint(tmp_path / "m.pt")
    root = small_sets["brats2023"].root
    argv = ["predict", "-m", str(ckpt), "-i", str(root), "-o", str(tmp_path / "o")]
    assert main([*argv, "--labels", "brats", "--device", "cpu"]) == 0
    assert "from --labels" in capsys.readouterr().out
    assert main([*argv, "--skip-existing", "--device", "cpu"]) == 0
    assert "wrote 0 of 2 cases" in capsys.readouterr().out


def test_iseg_subject_missing_a_modality_fails_alone(tmp_path, capsys):
    from invseg.data import synthesize

    info = synthesize("iseg", tmp_path / "iseg", cases=2, shape=(16, 16, 16))
    for ext in (".hdr", ".img"):
        (info.root / f"subject-2-T2{ext}").unlink()
    ckpt = _conv_checkpoint(
        tmp_path / "m.pt", "iseg", bias=(0.0, 0.0, 0.0, 5.0), modalities=("T1", "T2")
    )
    out = tmp_path / "pred"
    assert predict(ckpt, [info.root], out) == 1
    captured = capsys.readouterr()
    err = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert len(err) == 1 and "subject-2-T2" in err[0] and "'subject-2'" in err[0]
    assert "labels iseg (0/10/150/250) from the input layout iseg" in captured.out
    assert "wrote 1 of 2 cases" in captured.out
    labels = np.asarray(nib.load(out / "subject-1.nii.gz").dataobj)
    assert np.unique(labels).tolist() == [250]  # WM everywhere, in iSeg's own values


def test_rerun_removes_temporaries_of_a_killed_run_and_says_how_many(small_sets, tmp_path, capsys):
    import uuid

    src = small_sets["brats2020"]
    out = tmp_path / "pred"
    (out / "probabilities").mkdir(parents=True)
    case_id = src.cases[0].case_id
    stale = [  # the names save_image gives a prediction and a probability map it was writing
        out / f".{case_id}.{uuid.uuid4().hex}.tmp.nii.gz",
        out / "probabilities" / f".{case_id}.{uuid.uuid4().hex}.tmp.nii.gz",
    ]
    keep = [out / ".notes", out / "notes.tmp.nii.gz", out / f".{case_id}.tmp.nii.gz"]
    for p in stale + keep:
        p.write_bytes(b"half")
    ckpt = _conv_checkpoint(tmp_path / "m.pt")
    assert predict(ckpt, [src.root], out, save_probabilities=True) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert "wrote 2 of 2 cases" in last and "removed 2 temporary files left by a killed run" in last
    assert not any(p.exists() for p in stale) and all(p.read_bytes() == b"half" for p in keep)
    hidden = sorted(p.name for p in out.rglob(".*"))
    assert hidden == sorted(p.name for p in keep if p.name.startswith("."))
    assert predict(ckpt, [src.root], out) == 0
    assert "removed" not in capsys.readouterr().out


@pytest.mark.parametrize(("flag", "expected"), [(None, 0.0), (0.6, 0.6)])
def test_overlap_reaches_the_sliding_window_over_the_checkpoints_own(
    small_sets, tmp_path, monkeypatch, flag, expected
):
    """``--overlap`` overrides the checkpoint's ``infer.overlap`` (0.0 here) in the window."""
    import monai.inferers

    seen: list[float] = []
    real = monai.inferers.sliding_window_inference

    def spy(*args, **kwargs):
        seen.append(kwargs["overlap"])
        return real(*args, **kwargs)

    monkeypatch.setattr(monai.inferers, "sliding_window_inference", spy)
    ckpt = _conv_checkpoint(tmp_path / "m.pt")
    root = small_sets["brats2020"].root
    assert predict(ckpt, [root], tmp_path / "o", overlap=flag) == 0
    assert seen and set(seen) == {expected}
