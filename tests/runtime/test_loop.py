"""The one training loop on a toy task: exact resume, signals, divergence guard, overrides."""

from __future__ import annotations

import math
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
from invseg.runtime.loop import (
    Loop,
    LoopSettings,
    NonFiniteLossError,
    TrainingDiverged,
    TrainingInterrupted,
)
from invseg.runtime.task import DivergenceGuard


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


def settings(
    run: Path, *, steps: int = 8, lr: float = 0.05, resume: bool = False, val: int | None = 4, **kw
):
    cfg = {"train": {"lr": lr, "steps": steps, "batch_size": 3}, "output": {"dir": str(run)}}
    return LoopSettings(
        run_dir=run,
        total_steps=steps,
        config=cfg,
        checkpoint_every=1,
        val_every_steps=val,
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


def sgd(lr: float) -> Toy:
    """The toy task with plain SGD at a constant rate (lr 1 diverges within a few steps)."""
    task = Toy(lr=lr)
    task.optimizer = torch.optim.SGD(task.model.parameters(), lr=lr)
    task.scheduler = None
    return task


def max_weight(state: dict[str, torch.Tensor]) -> float:
    return max(float(v.abs().max()) for v in state.values())


@pytest.mark.parametrize("val", [4, None])  # weights NaN before best.pt / before the final last.pt
def test_weights_that_turn_non_finite_at_the_last_step_fail_and_save_nothing(tmp_path, val):
    task = Toy()
    for group in task.optimizer.param_groups:
        group["lr"] = math.inf  # what --set train.lr=.inf did before the config refused it
    with pytest.raises(NonFiniteLossError, match=r"weights are not finite .* at step 1 "):
        Loop(task, settings(tmp_path / "inf", steps=1, val=val), DistInfo()).run()
    assert not (tmp_path / "inf" / "last.pt").exists()
    assert not (tmp_path / "inf" / "best.pt").exists()


def test_exploding_weights_at_the_last_step_are_divergence(tmp_path) -> None:
    task = Toy()
    task.optimizer.param_groups[0]["lr"] = 1e5  # Adam: every weight moves by about 1e5
    with pytest.raises(TrainingDiverged, match=r"diverged \(max \|w\| 1e\+05 > 1000 x"):
        Loop(task, settings(tmp_path / "big", steps=1), DistInfo()).run()
    assert not (tmp_path / "big" / "last.pt").exists()
    assert not (tmp_path / "big" / "best.pt").exists()


def test_exploding_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path) -> None:
    with pytest.raises(TrainingDiverged, match=r"diverged \(loss .* at step 5 .*\(step 3\)"):
        run(tmp_path / "sgd", sgd(2.0), steps=12)  # losses 13, 206, 776, ..., 2e6 at step 5
    kept = load_checkpoint(tmp_path / "sgd" / "last.pt")
    assert kept["step"] == 3 and max_weight(kept["model"]) < 100
    assert kept["guard"]["losses"] == pytest.approx([12.95, 206.1, 776.0], rel=1e-3)
    assert load_checkpoint(tmp_path / "sgd" / "best.pt")["step"] < 5
    assert pd.read_csv(tmp_path / "sgd" / "metrics.csv")["step"].tolist() == [1, 2, 3]


def test_healthy_training_never_trips_the_guard(tmp_path) -> None:
    task = run(tmp_path / "ok", sgd(0.1), steps=40)  # noisy: 13, 0.8, 1.3, ..., 0.1
    losses = pd.read_csv(tmp_path / "ok" / "metrics.csv")["loss"]
    assert losses.iloc[-5:].mean() < losses.iloc[0] / 20
    assert load_checkpoint(tmp_path / "ok" / "last.pt")["step"] == 40
    assert 2 < task.model.weight.abs().max() < 4  # the true weights: 1, -2, 0.5, 3


@pytest.mark.parametrize(
    ("losses", "loss", "tripped"),
    [
        ([], 1e9, False),  # no reference yet
        ([1.0], 999.0, False),
        ([1.0], 1001.0, True),
        ([1.0, 100.0, 2.0], 1500.0, False),  # the median, not the mean or the first
        ([0.0, 0.0], 5.0, False),  # no positive reference: the rule is off
        ([1.0], float("inf"), True),
    ],
)
def test_loss_rule_compares_with_the_median_of_the_first_losses(losses, loss, tripped):
    guard = DivergenceGuard(list(losses))
    assert (guard.loss_problem(loss) is not None) == tripped
    assert len(guard.losses) == min(DivergenceGuard.WINDOW, len(losses) + (not tripped))


@pytest.mark.parametrize(
    ("w0", "peak", "tripped"),
    [(0.5, 999.0, False), (0.5, 1001.0, True), (20.0, 19_000.0, False), (20.0, 21_000.0, True)],
)
def test_weight_rule_compares_with_the_initial_weights(w0, peak, tripped) -> None:
    guard = DivergenceGuard(weight_max0=w0)
    assert (guard.weight_problem(peak) is not None) == tripped
    assert guard.weight_problem(float("nan")) is not None


def test_guard_references_survive_a_resume(tmp_path) -> None:
    run(tmp_path / "r", steps=6)
    first = load_checkpoint(tmp_path / "r" / "last.pt")["guard"]
    assert len(first["losses"]) == DivergenceGuard.WINDOW and first["weight_max0"] > 0
    run(tmp_path / "r", steps=8, resume=True)
    assert load_checkpoint(tmp_path / "r" / "last.pt")["guard"] == first
    for malformed in (None, {"losses": ["many"]}, {"weight_max0": [1]}):  # older or edited files
        assert DivergenceGuard.from_state(malformed) == DivergenceGuard()


def test_failed_resume_leaves_config_yaml_of_the_checkpoint(tmp_path) -> None:
    run(tmp_path / "r", steps=4)
    task = Toy(lr=0.5)
    task.nan_at = 1  # the first loss of the resumed run is NaN: nothing new is saved
    with pytest.raises(NonFiniteLossError):
        run(tmp_path / "r", task, steps=8, lr=0.5, resume=True)
    saved = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert (
        saved["train"]["lr"]
        == load_checkpoint(tmp_path / "r" / "last.pt")["config"]["train"]["lr"]
        == 0.05
    )


def test_resume_commands_name_the_run_folder_and_overrides(tmp_path, monkeypatch) -> None:
    folder = tmp_path / "my run"
    signal_at(monkeypatch, 2, signal.SIGTERM)
    with pytest.raises(TrainingInterrupted) as info:
        run(folder, overrides=("train.steps=8", "data.crop=[8, 8, 8]"))
    monkeypatch.undo()
    expected = f"--resume --set train.steps=8 --set 'data.crop=[8, 8, 8]' -o '{folder}'"
    assert expected in str(info.value)
    task = Toy()
    task.nan_at = 2
    with pytest.raises(NonFiniteLossError) as info:
        run(folder, task, resume=True)
    assert f"--resume -o '{folder}' --set train.lr=" in str(info.value)


def test_resume_purges_the_tensorboard_steps_it_logs_again(tmp_path) -> None:
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.compat.proto.event_pb2 import SessionLog

    task = Toy()
    task.nan_at = 5  # steps 1-4 are logged, last.pt holds step 3
    with pytest.raises(NonFiniteLossError):
        run(tmp_path / "tb", task)
    before = set((tmp_path / "tb" / "tb").iterdir())
    run(tmp_path / "tb", resume=True)
    (new,) = set((tmp_path / "tb" / "tb").iterdir()) - before
    starts = [
        e.step
        for e in EventFileLoader(str(new)).Load()
        if e.HasField("session_log") and e.session_log.status == SessionLog.START
    ]
    assert starts == [4]  # TensorBoard hides the old file's steps >= 4


def validated_steps(run_dir: Path) -> list[int]:
    df = pd.read_csv(run_dir / "metrics.csv")
    return df.loc[df["neg_mse"].notna(), "step"].tolist() if "neg_mse" in df else []


@pytest.mark.parametrize(
    ("steps", "val", "expected"),
    [(10, 4, [4, 8, 10]), (8, 4, [4, 8]), (6, 1, [1, 2, 3, 4, 5, 6]), (5, None, [])],
)
def test_validation_runs_every_val_every_steps_and_at_the_last_step(tmp_path, steps, val, expected):
    run(tmp_path / "v", steps=steps, val=val)  # 4 batches an epoch: epochs do not count
    assert validated_steps(tmp_path / "v") == expected
    assert (tmp_path / "v" / "best.pt").exists() == bool(expected)


def test_time_budget_stop_validates_the_step_it_stops_at(tmp_path) -> None:
    run(tmp_path / "t", steps=10, val=4, max_minutes=1e-9)  # over budget after step 1
    assert load_checkpoint(tmp_path / "t" / "last.pt")["step"] == 1
    assert validated_steps(tmp_path / "t") == [1]


def test_signal_stop_skips_the_validation_at_the_stop(tmp_path, monkeypatch) -> None:
    signal_at(monkeypatch, 3, signal.SIGTERM)
    with pytest.raises(TrainingInterrupted):
        run(tmp_path / "s", steps=10, val=2)
    assert load_checkpoint(tmp_path / "s" / "last.pt")["step"] == 3
    assert validated_steps(tmp_path / "s") == [2]


def test_schedule_line_is_printed_at_the_start(tmp_path, capsys) -> None:
    run(tmp_path / "p", steps=8, val=4, per_step="3 samples (train.batch_size)")
    assert (
        "schedule: 8 optimizer steps of 3 samples (train.batch_size); validation every 4 steps "
        "and at the end; last.pt every step and at each epoch end\n"
    ) in capsys.readouterr().out


def test_settings_from_config_copy_the_train_keys_the_config_has(tmp_path) -> None:
    train = {"accumulation": 2, "val_every_steps": 7, "max_minutes": 3.0, "amp": True}
    train |= {"grad_clip": 1.0, "lr": 0.01, "weight_decay": 0.1, "checkpoint_every": 9}
    cfg = {"train": {**train, "progress": False, "batch_size": 4}, "output": {"dir": "~/a b"}}
    s = LoopSettings.from_config(
        cfg,
        total_steps=11,
        command="invseg train",
        source="my.yaml",
        overrides=["train.lr=0.01"],
        resume=True,
        resume_mutable=["train.lr"],
    )
    assert {k: getattr(s, k) for k in train} == train and s.progress is False
    assert (s.total_steps, s.resume, s.resume_mutable, s.config) == (11, True, ("train.lr",), cfg)
    assert s.run_dir == Path("~/a b").expanduser()
    quoted = "'" + str(Path("~/a b").expanduser()) + "'"
    assert s.resume_command() == f"invseg train my.yaml --resume --set train.lr=0.01 -o {quoted}"
    bare = LoopSettings.from_config(
        {"train": {"lr": 0.5}, "output": {"dir": "r"}}, total_steps=3, command="invseg x"
    )
    defaults = LoopSettings(Path("r"), 3, {})
    for key in ("accumulation", "val_every_steps", "max_minutes", "amp", "weight_decay"):
        assert getattr(bare, key) == getattr(defaults, key), key
    assert bare.lr == 0.5 and bare.resume_command() == "invseg x CONFIG --resume -o r"
