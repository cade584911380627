"""Fault test: kill `invseg train` (SIGKILL, SIGTERM, SIGINT) at several steps, then resume.

Each interrupted run is a real subprocess that sends itself the signal right after an optimizer
step; the resumed run must end with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from invseg.commands.train import train
from invseg.runtime.checkpoint import load_checkpoint
from tests.conftest import tiny_config

REPO = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import os, sys
    import torch
    torch.set_num_threads(1)
    from invseg.runtime.loop import Loop
    from invseg.cli import main

    signum, at = int(sys.argv[2]), int(sys.argv[3])
    original, calls = Loop._optimizer_step, {"n": 0}

    def step_then_signal(self):
        original(self)
        calls["n"] += 1
        if calls["n"] == at:
            os.kill(os.getpid(), signum)

    Loop._optimizer_step = step_then_signal
    sys.exit(main(["train", sys.argv[1]]))
    """
)


def _config(root: Path, out: Path, tmp: Path) -> Path:
    cfg = tiny_config(root, out, steps=6, checkpoint_every=1, scheduler="cosine")
    path = tmp / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def reference(brats_tiny, tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("ref")
    run = train(_config(brats_tiny.root, tmp / "ref", tmp))
    return load_checkpoint(run / "last.pt")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "at", "status", "saved"),
    [
        (signal.SIGKILL, 2, -9, 1),  # mid-epoch: step 2's checkpoint waits for step 3's loss
        (signal.SIGKILL, 4, -9, 3),  # just after an epoch end
        (signal.SIGTERM, 3, 143, 3),  # at an epoch end: the current step is written
        (signal.SIGINT, 5, 130, 5),  # mid-epoch
    ],
)
def test_killed_training_resumes_to_the_uninterrupted_weights(
    brats_tiny, tmp_path, reference, signum, at, status, saved
) -> None:
    config = _config(brats_tiny.root, tmp_path / "run", tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(config), str(int(signum)), str(at)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == status, result.stderr[-2000:]
    if signum != signal.SIGKILL:
        assert "Traceback" not in result.stderr and "--resume" in result.stderr
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == saved
    train(config, resume=True)
    got = load_checkpoint(tmp_path / "run" / "last.pt")
    assert got["step"] == reference["step"] == 6
    for k, v in reference["model"].items():
        torch.testing.assert_close(got["model"][k], v, rtol=0, atol=1e-6, msg=k)
    assert pd.read_csv(tmp_path / "run" / "metrics.csv")["step"].tolist() == list(range(1, 7))
    assert not list((tmp_path / "run").glob(".*.tmp"))
