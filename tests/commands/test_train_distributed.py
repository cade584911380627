"""DDP under torchrun: 2 gloo processes on CPU match one process with the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from invseg.commands.train import train
from invseg.runtime.checkpoint import load_checkpoint
from tests.conftest import tiny_config


@pytest.mark.slow
def test_two_gloo_processes_match_single_process_with_same_global_batch(brats_tiny, tmp_path):
    # 2 training cases (val 2 of 4), full-volume crops without augmentation: every sample is
    # deterministic, so one process with batch 2 and two processes with batch 1 see the same data.
    # SGD: Adam's first step is ~lr * sign(grad), which amplifies rounding in near-zero grads.
    common = {
        "steps": 1,
        "scheduler": "constant",
        "measure_memory": False,
        "optimizer": "sgd",
        "momentum": 0.0,
        "lr": 0.5,
    }
    single = tiny_config(brats_tiny.root, tmp_path / "single", batch_size=2, **common)
    ddp = tiny_config(brats_tiny.root, tmp_path / "ddp", batch_size=1, **common)
    ids = sorted(c.case_id for c in brats_tiny.cases)
    for cfg in (single, ddp):
        cfg["data"].update(val_cases=ids[2:], augment=False)
    train(single)
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(ddp))
    script = tmp_path / "run_train.py"
    script.write_text("import sys\nfrom invseg.commands.train import train\ntrain(sys.argv[1])\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path.cwd())}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(script),
        str(path),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = load_checkpoint(tmp_path / "single" / "last.pt")
    b = load_checkpoint(tmp_path / "ddp" / "last.pt")
    assert a["step"] == b["step"] == 1
    for k, v in a["model"].items():
        torch.testing.assert_close(b["model"][k], v, rtol=1e-5, atol=1e-6, msg=k)
