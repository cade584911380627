"""End to end on the CPU: synthetic BraTS in nnU-Net's layout, nnU-Net's planning and
preprocessing, ``invseg nnunet plans``, training through nnU-Net's own ``nnUNetTrainer`` and
prediction with its ``nnUNetPredictor`` (the nnU-Net steps: :mod:`tests.nnunet.nnunet_steps`).

The volumes are 32 x 32 x 16 voxels at 1 mm, so nnU-Net plans 4 stages whose last stride keeps
the thin axis (``[1, 2, 2]`` in its z, y, x order) and a 16 x 32 x 32 patch; the features are
shrunk to 8 .. 64 for the CPU (the one change made to nnU-Net's plans by hand).
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from invseg.cli import main

pytest.importorskip("nnunetv2")
pytestmark = pytest.mark.slow  # about 1.5 min on 2 CPU cores, most of it nnU-Net's imports

ROOT = Path(__file__).resolve().parents[2]
DATASET_ID, NAME = 501, "Dataset501_BraTSSynth"
FEATURES = [8, 16, 32, 64]


def _nnunet(step: str, *args: object, env: dict) -> str:
    """Run an nnU-Net step in a child process (nnU-Net reads its folders from the environment)."""
    result = subprocess.run(
        [sys.executable, "-m", "tests.nnunet.nnunet_steps", step, *map(str, args)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, f"{step}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def nnunet_env(tmp_path_factory) -> dict:
    """Four labelled and two unlabelled cases, planned and preprocessed by nnU-Net."""
    root = tmp_path_factory.mktemp("nnunet")
    env = dict(os.environ, OMP_NUM_THREADS="1", nnUNet_n_proc_DA="0", nnUNet_compile="false")
    for key in ("raw", "preprocessed", "results"):
        env[f"nnUNet_{key}"] = str(root / key)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    assert main(["data", "synth", "--kind", "brats", "--layout", "nnunet", "--preset", "easy",
                 "--cases", "4", "--unlabeled", "2", "--shape", "32", "32", "16", "--seed", "0",
                 "-o", str(root / "raw" / NAME)]) == 0  # fmt: skip
    _nnunet("plan", DATASET_ID, env=env)
    path = root / "preprocessed" / NAME / "nnUNetPlans.json"
    plans = json.loads(path.read_text())
    arch = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    arch["features_per_stage"] = FEATURES[: arch["n_stages"]]  # CPU-sized
    path.write_text(json.dumps(plans, indent=4))
    return env


def test_the_synthetic_dataset_is_nnunets_region_based_brats(nnunet_env) -> None:
    raw = Path(nnunet_env["nnUNet_raw"]) / NAME
    meta = json.loads((raw / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3],
                              "enhancing tumor": 3}  # fmt: skip
    assert meta["regions_class_order"] == [1, 2, 3] and meta["numTraining"] == 4
    plans = Path(nnunet_env["nnUNet_preprocessed"]) / NAME / "nnUNetPlans.json"
    config = json.loads(plans.read_text())["configurations"]["3d_fullres"]
    assert config["patch_size"] == [16, 32, 32]  # nnU-Net's z, y, x
    assert config["architecture"]["arch_kwargs"]["strides"][-1] == [1, 2, 2]


def _train_loss(results: Path) -> float:
    log = next(results.glob("fold_all/training_log_*.txt")).read_text()
    return float(re.findall(r"train_loss (\S+)", log)[-1])


@pytest.mark.parametrize("model", ["partially", "fully"])
def test_plan_train_and_predict_through_nnunets_own_trainer(
    nnunet_env, model, capsys, monkeypatch
) -> None:
    env, plans_name = nnunet_env, f"nnUNetPlansInvseg_{model}"
    monkeypatch.setenv("nnUNet_preprocessed", env["nnUNet_preprocessed"])
    status = main(["nnunet", "plans", "-d", str(DATASET_ID), "--model", model, "--budget", "4GB",
                   "--cubes", "16", "24", "32", "-o", plans_name])  # fmt: skip
    assert status == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"nnUNetv2_train {DATASET_ID} 3d_fullres FOLD -p {plans_name}"
    )
    raw, out = Path(env["nnUNet_raw"]) / NAME, Path(env["nnUNet_results"]) / f"pred_{model}"
    _nnunet("run", DATASET_ID, plans_name, 2, raw / "imagesTs", out, env=env)

    results = Path(env["nnUNet_results"]) / NAME / f"nnUNetTrainer__{plans_name}__3d_fullres"
    checkpoint = torch.load(results / "fold_all" / "checkpoint_final.pth", weights_only=False)
    weights = checkpoint["network_weights"]
    assert all(k.startswith("net.") for k in weights)  # invseg's net, trained
    assert any(k.startswith("net.supervision_heads.") for k in weights)
    assert math.isfinite(_train_loss(results))
    for case in ("BraTS_005", "BraTS_006"):
        image = nib.load(raw / "imagesTs" / f"{case}_0000.nii.gz")
        pred = nib.load(out / f"{case}.nii.gz")
        assert pred.shape == image.shape == (32, 32, 16)
        np.testing.assert_allclose(pred.affine, image.affine, atol=1e-5)
        values = np.unique(np.asarray(pred.dataobj))
        assert set(values.tolist()) <= {0, 1, 2, 3}  # nnU-Net's labels from its 3 regions
