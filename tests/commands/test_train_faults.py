"""Fault tests: kill `invseg train` (SIGKILL, SIGTERM, SIGINT) at several steps, then resume;
absurd learning rates and weights that turn NaN; what each torchrun rank prints.

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

from invseg.cli import main
from invseg.commands.train import train
from invseg.runtime.checkpoint import load_checkpoint
from invseg.runtime.config import ConfigError
from invseg.runtime.loop import NonFiniteLossError, TrainingInterrupted
from invseg.tasks.seg import SegTask
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
        assert "Traceback" not in result.stderr
        assert f"--resume -o {tmp_path / 'run'}`" in result.stderr  # the folder it used
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == saved
    train(config, resume=True)
    got = load_checkpoint(tmp_path / "run" / "last.pt")
    assert got["step"] == reference["step"] == 6
    for k, v in reference["model"].items():
        torch.testing.assert_close(got["model"][k], v, rtol=0, atol=1e-6, msg=k)
    assert pd.read_csv(tmp_path / "run" / "metrics.csv")["step"].tolist() == list(range(1, 7))
    assert not list((tmp_path / "run").glob(".*.tmp"))


@pytest.mark.parametrize(
    ("command", "value", "message"),
    [
        (["train", "SEG"], ".inf", "train.lr: inf must be a finite number"),
        (["train", "SEG"], ".nan", "train.lr: nan must be a finite number"),
        (["train", "SEG"], "1e38", "train.lr: 1e+38 must be <= 10"),  # was a torch overflow
        (["recon", "train", "recon_2d"], ".inf", "train.lr: inf must be a finite number"),
        (["recon", "train", "recon_2d"], "1e6", "train.lr: 1000000.0 must be <= 10"),
    ],
)
def test_cli_refuses_a_non_finite_or_absurd_lr_naming_the_key(
    tmp_path, capsys, command, value, message
) -> None:
    config = tmp_path / "seg.yaml"
    config.write_text(yaml.safe_dump(tiny_config(tmp_path / "data", tmp_path / "o")))
    argv = [str(config) if a == "SEG" else a for a in command]
    assert main([*argv, "-o", str(tmp_path / "run"), "--set", f"train.lr={value}"]) == 2
    assert capsys.readouterr().err.startswith(f"invseg: error: {message}")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("validate", [True, False])  # NaN weights before best.pt / last.pt
def test_weights_that_turn_nan_at_the_last_step_exit_non_zero_without_checkpoints(
    brats_tiny, tmp_path, monkeypatch, capsys, validate
) -> None:
    original = SegTask.__init__

    def infinite_lr(self, cfg, info) -> None:
        original(self, cfg, info)
        for group in self.optimizer.param_groups:
            group["lr"] = float("inf")  # what --set train.lr=.inf did before it was refused

    monkeypatch.setattr(SegTask, "__init__", infinite_lr)
    cfg = tiny_config(brats_tiny.root, tmp_path / "o", steps=1)
    if not validate:
        cfg["data"].update(val_fraction=0.0)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(config), "-o", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "weights are not finite (max |w| nan) at step 1" in err[0]
    assert "no checkpoint had been written yet" in err[0]
    assert not list((tmp_path / "run").glob("*.pt"))


@pytest.mark.parametrize(
    ("error", "status", "shared"),
    [
        (TrainingInterrupted("invseg: SIGTERM at step 3: checkpoint written", 15), 143, True),
        (NonFiniteLossError("training stopped: loss is nan at step 3"), 2, True),
        (ConfigError("train.lr: inf must be a finite number"), 2, True),
        (OSError("No space left on device"), 2, False),
        (ValueError("case BraTS_003: unreadable image"), 2, False),
    ],
)
def test_only_rank_0_prints_what_every_rank_meets(monkeypatch, capsys, error, status, shared):
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr("invseg.commands.train.train", fail)
    lines = {}
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        assert main(["train", "c.yaml"]) == status
        lines[rank] = capsys.readouterr().err
    assert lines["0"].strip().endswith(str(error)) and lines["0"].count("\n") == 1
    if shared:
        assert lines["1"] == ""
    else:  # a rank's own failure (its data shard, its disk) is reported with its rank
        assert lines["1"].startswith("invseg: rank 1: error: ") and str(error) in lines["1"]
