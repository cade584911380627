"""End to end on the CPU: synthetic BraTS (region-based) and iSeg (CSF/GM/WM labels) in
nnU-Net's layout, nnU-Net's planning and preprocessing, ``invseg nnunet plans``, training through
nnU-Net's own ``nnUNetTrainer`` and prediction with its ``nnUNetPredictor``. The nnU-Net steps
are ``invseg bench nnunet``'s children (:mod:`invseg.bench.nnunet_runs`), so the bench runs
what this test checks. Both nets train on BraTS; iSeg, only the Partially one.

The volumes are 32 x 32 x 16 voxels at 1 mm, so nnU-Net plans 4 stages whose last stride keeps
the thin axis (``[1, 2, 2]`` in its z, y, x order) and a 16 x 32 x 32 patch; the features are
shrunk to 8 .. 64 for the CPU (the one change made to nnU-Net's plans by hand).
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from invseg.bench.nnunet_runs import child_command
from invseg.cli import main

pytest.importorskip("nnunetv2")
pytestmark = pytest.mark.slow  # about 2.5 min on 2 CPU cores, most of it nnU-Net's imports

ROOT = Path(__file__).resolve().parents[2]
#: Each synthetic kind: nnU-Net's dataset id and name, and the prefix of its case ids.
DATASETS = {
    "brats": (501, "Dataset501_BraTSSynth", "BraTS"),
    "iseg": (502, "Dataset502_iSegSynth", "iSeg"),
}
#: The labels and channels of each kind's dataset.json.
LABELS = {
    "brats": {
        "background": 0,
        "whole tumor": [1, 2, 3],
        "tumor core": [2, 3],
        "enhancing tumor": 3,
    },
    "iseg": {"background": 0, "CSF": 1, "GM": 2, "WM": 3},
}
CHANNELS = {"brats": ["T1", "T1ce", "T2", "Flair"], "iseg": ["T1", "T2"]}
HEADS = {"brats": 3, "iseg": 4}  # nnU-Net's outputs: BraTS's regions, iSeg's classes
FEATURES = [8, 16, 32, 64]


def _nnunet(step: str, spec: dict, env: dict) -> str:
    """Run an nnU-Net step in a child process (nnU-Net reads its folders from the environment)."""
    result = subprocess.run(
        child_command(step, spec), cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, f"{step}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def nnunet_env(tmp_path_factory) -> dict:
    """nnU-Net's raw, preprocessed and results folders (one set for every dataset)."""
    root = tmp_path_factory.mktemp("nnunet")
    env = dict(os.environ, OMP_NUM_THREADS="1", nnUNet_n_proc_DA="0", nnUNet_compile="false")
    for key in ("raw", "preprocessed", "results"):
        env[f"nnUNet_{key}"] = str(root / key)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


@pytest.fixture(scope="module")
def planned(nnunet_env) -> Callable[[str], str]:
    """``kind -> kind`` once its dataset is there: four labelled and two unlabelled cases,
    planned and preprocessed by nnU-Net, at the first test that asks for it."""

    @functools.cache
    def prepare(kind: str) -> str:
        dataset_id, name, _ = DATASETS[kind]
        raw = Path(nnunet_env["nnUNet_raw"]) / name
        assert main(["data", "synth", "--kind", kind, "--layout", "nnunet", "--preset", "easy",
                     "--cases", "4", "--unlabeled", "2", "--shape", "32", "32", "16", "--seed",
                     "0", "-o", str(raw)]) == 0  # fmt: skip
        _nnunet("plan", {"dataset": dataset_id, "features": FEATURES}, nnunet_env)  # CPU-sized
        return kind

    return prepare


@pytest.mark.parametrize("kind", list(DATASETS))
def test_the_synthetic_dataset_is_the_nnunet_dataset_of_its_kind(nnunet_env, planned, kind):
    _, name, _ = DATASETS[planned(kind)]
    meta = json.loads((Path(nnunet_env["nnUNet_raw"]) / name / "dataset.json").read_text())
    assert meta["labels"] == LABELS[kind] and meta["numTraining"] == 4
    assert list(meta["channel_names"].values()) == CHANNELS[kind]
    assert meta.get("regions_class_order") == ([1, 2, 3] if kind == "brats" else None)
    plans = Path(nnunet_env["nnUNet_preprocessed"]) / name / "nnUNetPlans.json"
    config = json.loads(plans.read_text())["configurations"]["3d_fullres"]
    assert config["patch_size"] == [16, 32, 32]  # nnU-Net's z, y, x
    assert config["architecture"]["arch_kwargs"]["strides"][-1] == [1, 2, 2]


def _train_loss(results: Path) -> float:
    log = next(results.glob("fold_all/training_log_*.txt")).read_text()
    return float(re.findall(r"train_loss (\S+)", log)[-1])


@pytest.mark.parametrize(
    ("kind", "model"), [("brats", "partially"), ("brats", "fully"), ("iseg", "partially")]
)
def test_plan_train_and_predict_through_nnunets_own_trainer(
    nnunet_env, planned, kind, model, capsys, monkeypatch
) -> None:
    (dataset_id, name, prefix), env = DATASETS[planned(kind)], nnunet_env
    plans_name = f"nnUNetPlansInvseg_{model}"
    monkeypatch.setenv("nnUNet_preprocessed", env["nnUNet_preprocessed"])
    status = main(["nnunet", "plans", "-d", str(dataset_id), "--model", model, "--budget", "4GB",
                   "--cubes", "16", "24", "32", "-o", plans_name])  # fmt: skip
    assert status == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"nnUNetv2_train {dataset_id} 3d_fullres FOLD -p {plans_name}"
    )
    raw, out = Path(env["nnUNet_raw"]) / name, Path(env["nnUNet_results"]) / f"pred_{kind}_{model}"
    result = Path(env["nnUNet_results"]) / f"result_{kind}_{model}.json"
    spec = {"dataset": dataset_id, "plans": plans_name, "seed": 0, "epochs": 1, "iterations": 2,
            "device": "cpu", "images": str(raw / "imagesTs"), "predictions": str(out),
            "result": str(result)}  # fmt: skip
    _nnunet("run", spec, env)
    measured = json.loads(result.read_text())
    assert measured["network"] == f"{model.capitalize()}InvResNNUNet"
    assert measured["patch"] == [16, 32, 32] and len(measured["step_seconds"]) == 2
    assert measured["activation_bytes"] > 0 and measured["params"] > 0

    results = Path(env["nnUNet_results"]) / name / f"nnUNetTrainer__{plans_name}__3d_fullres"
    checkpoint = torch.load(results / "fold_all" / "checkpoint_final.pth", weights_only=False)
    weights = checkpoint["network_weights"]
    assert all(k.startswith("net.") for k in weights)  # invseg's net, trained
    assert any(k.startswith("net.supervision_heads.") for k in weights)
    assert weights["net.head.weight"].shape[0] == HEADS[kind]
    assert math.isfinite(_train_loss(results))
    for case in (f"{prefix}_005", f"{prefix}_006"):
        image = nib.load(raw / "imagesTs" / f"{case}_0000.nii.gz")
        pred = nib.load(out / f"{case}.nii.gz")
        assert pred.shape == image.shape == (32, 32, 16)
        np.testing.assert_allclose(pred.affine, image.affine, atol=1e-5)
        values = np.unique(np.asarray(pred.dataobj))
        assert set(values.tolist()) <= {0, 1, 2, 3}  # BraTS: from its 3 regions; iSeg: classes
