"""MONAI bundle configs/bundle_brats: inference, verify_net_in_out, training, moving weights."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

pytest.importorskip("ignite", reason="MONAI bundle engines need pytorch-ignite")
pytest.importorskip("fire", reason="`python -m monai.bundle` needs fire")

from invseg.commands.bundle import (
    case_name_formatter,
    export_to_bundle,
    import_from_bundle,
)
from invseg.commands.predict import load_model, predict

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "configs" / "bundle_brats"
CONFIGS = BUNDLE / "configs"
BRATS_VALUES = {0, 1, 2, 4}


def _bundle(command: str, args: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    """``python -m monai.bundle <command> --args_file args.json`` from the repository root."""
    args_file = tmp_path / f"{command}_args.json"
    args_file.write_text(json.dumps(args))
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", command, "--args_file", str(args_file)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_bundle_inference_on_invseg_checkpoint_matches_invseg_predict(
    trained_run: Path, brats_tiny, tmp_path: Path
) -> None:
    ckpt = trained_run / "best.pt"
    overrides = export_to_bundle(ckpt, tmp_path / "bundle")
    out = tmp_path / "bundle_pred"
    # the invseg checkpoint itself is the bundle's ckpt: CheckpointLoader reads its "model" key
    _bundle(
        "run",
        {
            "config_file": str(CONFIGS / "inference.json"),
            "dataset_dir": str(brats_tiny.root),
            "output_dir": str(out),
            "ckpt": str(ckpt),
            **overrides,
        },
        tmp_path,
    )
    ref_out = tmp_path / "invseg_pred"
    assert predict(ckpt, [brats_tiny.root], ref_out, device="cpu") == 0
    for case in brats_tiny.cases:
        pred_path = out / f"{case.case_id}.nii.gz"
        assert pred_path.is_file(), sorted(p.name for p in out.iterdir())
        pred, ref_img = nib.load(pred_path), nib.load(case.images[0])
        assert pred.shape == ref_img.shape
        np.testing.assert_allclose(pred.affine, ref_img.affine, atol=1e-5)
        labels = np.asarray(pred.dataobj)
        assert set(np.unique(labels).tolist()) <= BRATS_VALUES
        same = np.asarray(nib.load(ref_out / f"{case.case_id}.nii.gz").dataobj)
        assert np.mean(labels == same) > 0.999


def test_verify_net_in_out_passes_and_catches_a_wrong_output(tmp_path: Path) -> None:
    _bundle(
        "verify_net_in_out",
        {
            "net_id": "network_def",
            "meta_file": str(CONFIGS / "metadata.json"),
            "config_file": str(CONFIGS / "inference.json"),
            "n": 2,
            "channels": [4, 8],
        },
        tmp_path,
    )
    from monai.bundle import verify_net_in_out

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="parsing config_file", category=UserWarning)
        with pytest.raises(ValueError, match="output channel"):
            verify_net_in_out(
                net_id="network_def",
                meta_file=str(CONFIGS / "metadata.json"),
                config_file=str(CONFIGS / "inference.json"),
                device="cpu",
                n=2,
                **{"channels": [4, 8], "network_def#out_channels": 2},
            )


def test_bundle_training_runs_and_its_weights_load_into_invseg(brats_tiny, tmp_path: Path) -> None:
    models = tmp_path / "models"
    proc = _bundle(
        "run",
        {
            "config_file": str(CONFIGS / "train.json"),
            "dataset_dir": str(brats_tiny.root),
            "ckpt_dir": str(models),
            "crop": [16, 16, 16],
            "channels": [4, 8],
            "max_epochs": 1,
            "epoch_length": 2,
        },
        tmp_path,
    )
    assert "train_loss" in proc.stdout + proc.stderr
    weights = models / "model.pt"
    state = torch.load(weights, weights_only=True)
    ckpt = import_from_bundle(
        BUNDLE, tmp_path / "best.pt", weights=weights, overrides={"channels": [4, 8]}
    )
    model, meta = load_model(ckpt)
    assert meta.convention == "brats" and meta.kwargs["channels"] == [4, 8]
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)
    out = tmp_path / "pred"
    assert predict(ckpt, [brats_tiny.cases[0].images[0].parent], out, device="cpu") == 0
    assert (out / f"{brats_tiny.cases[0].case_id}.nii.gz").is_file()


def test_import_from_bundle_rejects_weights_of_another_network(tmp_path: Path) -> None:
    from invseg.nets import PartiallyInvResUNet

    torch.save(PartiallyInvResUNet(3, 4, 3, channels=(4, 8)).state_dict(), tmp_path / "w.pt")
    with pytest.raises(ValueError, match="overrides"):
        import_from_bundle(BUNDLE, tmp_path / "best.pt", weights=tmp_path / "w.pt")


@pytest.mark.parametrize(
    ("name", "case_id"),
    [
        ("/d/BraTS20_Training_001/BraTS20_Training_001_t1.nii.gz", "BraTS20_Training_001"),
        ("BraTS2021_00000_flair.nii.gz", "BraTS2021_00000"),
        ("BraTS-GLI-00001-000-t1n.nii.gz", "BraTS-GLI-00001-000"),
        ("BRATS_001_0000.nii.gz", "BRATS_001"),
        ("subject-1-T1.hdr", "subject-1"),
        ("BRATS_001.nii.gz", "BRATS_001"),
    ],
)
def test_case_name_formatter_gives_the_case_id(name: str, case_id: str) -> None:
    assert case_name_formatter({"filename_or_obj": name}, None)["subject"] == case_id


def _evil_weights(path: Path, marker: Path) -> Path:
    """A weights file whose unpickling would create ``marker`` (it must never run)."""

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"model": {"w": torch.ones(1)}, "x": Payload()}, path)
    return path


def test_import_from_bundle_refuses_a_pickled_object(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    weights = _evil_weights(tmp_path / "evil.pt", marker)
    with pytest.raises(ValueError, match="refused: the file pickles Python objects") as err:
        import_from_bundle(BUNDLE, tmp_path / "best.pt", weights=weights)
    assert not marker.exists() and "weights_only=False" not in str(err.value)
    assert "\n" not in str(err.value)


def test_bundle_run_refuses_a_pickled_object_in_one_line(brats_tiny, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    args = {
        "config_file": str(CONFIGS / "inference.json"),
        "dataset_dir": str(brats_tiny.root),
        "output_dir": str(tmp_path / "out"),
        "ckpt": str(_evil_weights(tmp_path / "evil.pt", marker)),
    }
    (tmp_path / "args.json").write_text(json.dumps(args))
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--args_file", str(tmp_path / "args.json")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert (
        "invseg: error:" in proc.stderr
        and "refused: the file pickles Python objects" in proc.stderr
    )
    assert "Traceback" not in proc.stderr and "weights_only=False" not in proc.stderr
    assert not marker.exists()
