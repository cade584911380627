"""The one training loop on a toy task: exact resume, signals, NaN guard, resume overrides."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
import yaml
from torch import nn

from invseg.runtime.checkpoint import load_checkpoint
from invseg.runtime.config import ConfigError
from invseg.runtime.distributed import DistInfo
from invseg.runtime.loop import Loop, LoopSettings, NonFiniteLossError, TrainingInterrupted


class Toy:
    """Noisy linear regression: uses the global RNG, a scheduler and per-epoch shuffles."""

    score = "neg_mse"
    has_validation = True

    def __init__(self, lr: float = 0.05, n: int = 12, bs: int = 3) -> None:
        torch.manual_seed(0)
        self.model = nn.Linear(4, 1)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: 1 / (1 + s))
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
        self.bs, self.nan_at = bs, None
        self.calls = 0

    def describe(self, amp) -> list[str]:
        return []

    def batches(self, epoch: int) -> list[torch.Tensor]:
        order = torch.randperm(len(self.x), generator=torch.Generator().manual_seed(epoch))
        return [order[i : i + self.bs] for i in range(0, len(order), self.bs)]

    def loss(self, model: nn.Module, idx: torch.Tensor, amp) -> torch.Tensor:
        self.calls += 1
        x = self.x[idx] + 0.01 * torch.randn(len(idx), 4)
        loss = (model(x) - self.y[idx]).square().mean()
        return loss * float("nan") if self.calls == self.nan_at else loss

    def validate(self, amp) -> dict[str, float]:
        with torch.no_grad():
            return {"neg_mse": -float((self.model(self.x) - self.y).square().mean())}

    def step_metrics(self) -> dict[str, float]:
        return {}

    def meta(self) -> dict[str, Any]:
        return {"target": "toy"}

    def finish(self, rows, run_dir) -> None:
        pass


def settings(run: Path, *, steps: int = 8, lr: float = 0.05, resume: bool = False, **kw):
    cfg = {"train": {"lr": lr, "steps": steps, "batch_size": 3}, "output": {"dir": str(run)}}
    return LoopSettings(
        run_dir=run,
        total_steps=steps,
        config=cfg,
        checkpoint_every=1,
        val_every_steps=4,
        progress=False,
        resume=resume,
        lr=lr,
        resume_mutable=("train.lr", "train.steps", "output"),
        **kw,
    )


def run(run_dir: Path, task: Toy | None = None, **kw) -> Toy:
    task = task or Toy(lr=kw.get("lr", 0.05))
    Loop(task, settings(run_dir, **kw), DistInfo()).run()
    return task


def signal_at(monkeypatch, step: int, signum: int) -> None:
    original, calls = Loop._optimizer_step, {"n": 0}

    def step_then_signal(self) -> None:
        original(self)
        calls["n"] += 1
        if calls["n"] == step:
            os.kill(os.getpid(), signum)

    monkeypatch.setattr(Loop, "_optimizer_step", step_then_signal)


@pytest.mark.parametrize(
    ("signum", "code", "at"), [(signal.SIGTERM, 143, 3), (signal.SIGINT, 130, 4)]
)
def test_signal_writes_the_current_step_and_resume_is_exact(
    tmp_path, monkeypatch, signum, code, at
) -> None:
    ref = run(tmp_path / "ref")
    signal_at(monkeypatch, at, signum)
    with pytest.raises(TrainingInterrupted) as info:
        run(tmp_path / "cut")
    monkeypatch.undo()
    assert info.value.exit_code == code and "--resume" in str(info.value)
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["step"] == at
    assert signal.getsignal(signum) is not None  # handlers restored
    got = run(tmp_path / "cut", resume=True)
    for a, b in zip(ref.model.state_dict().values(), got.model.state_dict().values()):
        assert torch.equal(a, b)
    assert pd.read_csv(tmp_path / "cut" / "metrics.csv")["step"].tolist() == list(range(1, 9))


def test_nan_keeps_the_checkpoint_validated_by_a_finite_loss(tmp_path) -> None:
    task = Toy()
    task.nan_at = 5  # loss of step 5 is NaN: the weights after step 4 are bad
    with pytest.raises(NonFiniteLossError, match=r"step 5 .*\(step 3\), is kept.*--resume"):
        run(tmp_path / "nan", task)
    assert load_checkpoint(tmp_path / "nan" / "last.pt")["step"] == 3


def test_resume_applies_a_changed_lr_and_records_it(tmp_path) -> None:
    run(tmp_path / "r", steps=4)
    task = run(tmp_path / "r", steps=6, lr=1e-4, resume=True)
    assert task.optimizer.param_groups[0]["initial_lr"] == 1e-4
    assert task.optimizer.param_groups[0]["lr"] == pytest.approx(1e-4 / 7)  # 1e-4 * lambda(6)
    saved = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert saved["train"]["lr"] == 1e-4
    assert load_checkpoint(tmp_path / "r" / "last.pt")["config"]["train"]["lr"] == 1e-4


def test_resume_refuses_other_changes(tmp_path) -> None:
    run(tmp_path / "r", steps=2)
    s = settings(tmp_path / "r", steps=4, resume=True)
    s.config["train"]["batch_size"] = 5
    with pytest.raises(ConfigError, match=r"train.batch_size: 3 -> 5 differs"):
        Loop(Toy(), s, DistInfo()).run()


def test_existing_run_needs_resume_and_stale_temps_go(tmp_path) -> None:
    run(tmp_path / "r", steps=2)
    with pytest.raises(ConfigError, match="--resume"):
        run(tmp_path / "r", steps=2)
    (tmp_path / "r" / ".last.pt.abcd1234.tmp").write_bytes(b"")
    run(tmp_path / "r", steps=3, resume=True)
    assert not list((tmp_path / "r").glob(".*.tmp"))
