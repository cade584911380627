"""One DDP training step with the NCCL backend (needs 2 visible GPUs)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import tiny_config
from tests.gpu.conftest import GPU

pytestmark = [
    *GPU,
    pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs for NCCL DDP"),
]


def test_nccl_ddp_step_matches_one_process_with_the_same_global_batch(brats_tiny, tmp_path):
    from invseg.commands.train import train
    from invseg.runtime.checkpoint import load_checkpoint

    common = {
        "steps": 1,
        "scheduler": "constant",
        "measure_memory": False,
        "optimizer": "sgd",
        "momentum": 0.0,
        "lr": 0.5,
        "device": "cuda",
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
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.run(
        [*cmd, str(script), str(path)], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = load_checkpoint(tmp_path / "single" / "last.pt")
    b = load_checkpoint(tmp_path / "ddp" / "last.pt")
    assert a["step"] == b["step"] == 1
    for k, v in a["model"].items():
        # TF32 and cuDNN's algorithm choice differ between the runs: float32 within 1e-3
        torch.testing.assert_close(b["model"][k], v, rtol=1e-3, atol=1e-4, msg=k)
