from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from invseg.commands.recon import load_recon_config, predict_recon, train_recon
from invseg.recon.io import write_fastmri_h5
from invseg.recon.simulate import birdcage_maps, cartesian_kt_mask, shepp_logan, simulate_kspace

TINY = [
    "data.shape=[16, 16]",
    "data.num_coils=2",
    "data.calib=4",
    "data.train_samples=2",
    "data.val_samples=1",
    "model.num_unrolls=2",
    "model.channels=4",
    "model.layers=2",
    "train.steps=2",
    "train.val_every_steps=1",
    "train.checkpoint_every=1",
    "train.device=cpu",
]


@pytest.mark.parametrize("name", ["recon_2d", "recon_3d_slab", "recon_cine"])
def test_shipped_configs_load(name):
    cfg = load_recon_config(f"configs/{name}.yaml")
    assert cfg.model.num_unrolls == 10


def test_train_and_predict_end_to_end(tmp_path):
    best = train_recon("configs/recon_2d.yaml", overrides=TINY, output=tmp_path / "run")
    state = torch.load(best, weights_only=True)
    assert state["step"] >= 1 and "raw_mu" in "".join(state["model"])
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").read_text().splitlines()))
    assert [r["step"] for r in rows] == ["1", "2"] and float(rows[-1]["val_psnr"]) > 0
    # resume continues from last.pt; memory keys may change, they do not touch the weights
    train_recon(
        "configs/recon_2d.yaml",
        overrides=[*TINY, "train.steps=3", "model.memory=checkpoint", "model.drift_every=1"],
        output=tmp_path / "run",
        resume=True,
    )
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").read_text().splitlines()))
    assert [r["step"] for r in rows] == ["1", "2", "3"]

    S = birdcage_maps(2, 16)
    m = cartesian_kt_mask(1, 16, 2.0, calib=6, seed=0)[0]
    k = simulate_kspace(shepp_logan(16), S, m)
    h5 = write_fastmri_h5(tmp_path / "a.h5", k[None].numpy(), mask=m[0].numpy())
    npz = tmp_path / "b.npz"
    np.savez(npz, kspace=k.numpy(), mask=m[None].numpy(), coil_maps=S.numpy())
    bad = tmp_path / "c.npz"
    np.savez(bad, kspace=k.numpy())
    out = tmp_path / "pred"
    failed = predict_recon(best, [h5, npz, bad, tmp_path / "missing.h5"], out)
    assert failed == 2
    x = np.load(out / "b_recon.npy")
    assert x.shape == (1, 16, 16) and np.iscomplexobj(x)
    assert (out / "a_recon.nii.gz").exists() and (out / "b_recon.nii.gz").exists()
    assert predict_recon(best, [npz], out, fmt="npy") == 0
    assert np.load(out / "b_magnitude.npy").shape == (16, 16)


def test_cine_train_runs(tmp_path):
    over = [o for o in TINY if not o.startswith("data.shape")] + ["data.shape=[4, 16, 16]"]
    best = train_recon("configs/recon_cine.yaml", overrides=over, output=tmp_path)
    assert best.exists()


def test_existing_run_needs_resume(tmp_path):
    run = tmp_path / "run"
    train_recon("recon_2d", overrides=[*TINY, "train.steps=1"], output=run)
    before = (run / "last.pt").read_bytes()
    with pytest.raises(ValueError, match="--resume"):
        train_recon("recon_2d", overrides=[*TINY, "train.steps=1"], output=run)
    assert (run / "last.pt").read_bytes() == before
    with pytest.raises(ValueError, match="model.channels"):
        train_recon(
            "recon_2d", overrides=[*TINY, "train.steps=2", "model.channels=8"], output=run,
            resume=True,
        )  # fmt: skip
    assert (run / "last.pt").read_bytes() == before


def test_lr_without_a_dot_is_a_float(tmp_path):
    best = train_recon("recon_2d", overrides=[*TINY, "train.lr=3e-4"], output=tmp_path / "r")
    assert torch.load(best, weights_only=True)["config"]["train"]["lr"] == pytest.approx(3e-4)


def test_malicious_checkpoint_is_refused_by_predict_and_resume(tmp_path):
    marker = []

    class Payload:
        def __reduce__(self):
            return (marker.append, ("executed",))

    run = tmp_path / "run"
    run.mkdir()
    torch.save({"model": {}, "step": 1, "x": Payload()}, run / "last.pt")
    with pytest.raises(ValueError, match="refused"):
        predict_recon(run / "last.pt", [], tmp_path / "o")
    with pytest.raises(ValueError, match="refused"):
        train_recon("recon_2d", overrides=TINY, output=run, resume=True)
    assert marker == []


def test_bad_config_keys_have_hints():
    with pytest.raises(ValueError, match="Did you mean 'num_unrolls'"):
        load_recon_config("configs/recon_2d.yaml", ["model.num_unroll=3"])
    with pytest.raises(ValueError, match="spatial_dims"):
        load_recon_config("configs/recon_2d.yaml", ["model.spatial_dims=3"])


def _tiny_inputs(tmp_path):
    S = birdcage_maps(2, 16)
    m = cartesian_kt_mask(1, 16, 2.0, calib=6, seed=0)[0]
    k = simulate_kspace(shepp_logan(16), S, m)
    np.savez(tmp_path / "b.npz", kspace=k.numpy(), mask=m[None].numpy(), coil_maps=S.numpy())
    h5 = write_fastmri_h5(tmp_path / "in" / "b.h5", k[None].numpy(), mask=m[0].numpy())
    return tmp_path / "b.npz", h5


def test_predict_rerun_says_what_it_replaced_and_removes_killed_temporaries(tmp_path, capsys):
    import uuid

    best = train_recon("recon_2d", overrides=[*TINY, "train.steps=1"], output=tmp_path / "run")
    npz, h5 = _tiny_inputs(tmp_path)
    out = tmp_path / "pred"
    out.mkdir()
    stale = [out / ".b_recon.npy.ab_12xyz.tmp", out / f".b_recon.{uuid.uuid4().hex}.tmp.nii.gz"]
    keep = [out / ".b_recon.npy.tmp", out / "notes.tmp"]
    for p in stale + keep:
        p.write_bytes(b"half")
    capsys.readouterr()
    assert predict_recon(best, [npz], out) == 0
    first = capsys.readouterr().out.splitlines()[-1]
    assert first == (
        f"recon predict: wrote 1 of 1 inputs to {out} "
        "(removed 2 temporary files left by a killed run)"
    )
    assert not any(p.exists() for p in stale) and all(p.exists() for p in keep)
    assert predict_recon(best, [npz], out) == 0
    assert capsys.readouterr().out.splitlines()[-1].endswith("(replaced 1 earlier result)")
    # b.npz and in/b.h5 both write b_recon.*: the second one fails instead of overwriting
    before = np.load(out / "b_recon.npy")
    assert predict_recon(best, [npz, h5], out) == 1
    captured = capsys.readouterr()
    assert f"error: {h5}: its outputs b_recon.npy" in captured.err and str(npz) in captured.err
    assert "wrote 1 of 2 inputs" in captured.out and "(1 failed; replaced 1 earlier result)" in (
        captured.out
    )
    np.testing.assert_array_equal(np.load(out / "b_recon.npy"), before)
