"""Training workflow: end to end, checkpoints, exact resume, NaN stop, config overrides."""

from __future__ import annotations

import shlex
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from invseg.commands.train import NonFiniteLossError, split_cases, train
from invseg.runtime.checkpoint import load_checkpoint
from invseg.runtime.config import ConfigError, list_configs, read_yaml
from invseg.runtime.loop import Loop
from invseg.tasks.config import load_config, load_recon_config
from invseg.tasks.seg import SegTask
from tests.conftest import tiny_config


def test_run_folder_holds_checkpoints_metrics_and_curves(trained_run: Path) -> None:
    names = {p.name for p in trained_run.iterdir()}
    assert {"last.pt", "best.pt", "metrics.csv", "config.yaml", "curves.png", "tb"} <= names
    df = pd.read_csv(trained_run / "metrics.csv")
    assert df["step"].tolist() == [1, 2]
    assert {"dice_TC", "dice_WT", "dice_ET", "hd95_WT", "dice_mean"} <= set(df.columns)
    assert df["loss"].notna().all()
    assert 0.0 <= df["dice_mean"].dropna().iloc[-1] <= 1.0
    assert not list(trained_run.glob(".*.tmp"))


def test_checkpoint_loads_weights_only_with_predict_metadata(trained_run: Path) -> None:
    ckpt = torch.load(trained_run / "last.pt", weights_only=True)
    assert ckpt["step"] == 2
    meta = ckpt["meta"]
    assert meta["target"] == "invseg.nets.PartiallyInvResUNet"
    assert meta["kwargs"]["channels"] == [4, 8]
    assert meta["convention"] == "brats"
    assert meta["modalities"] and len(meta["modalities"]) == 4
    assert meta["roi_size"] == [32, 32, 32]
    assert {"optimizer", "scheduler", "rng", "config"} <= set(ckpt)
    assert isinstance(ckpt["rng"]["torch"], torch.Tensor)


def test_existing_run_needs_resume(trained_run: Path, brats_tiny) -> None:
    with pytest.raises(ConfigError, match="--resume"):
        train(tiny_config(brats_tiny.root, trained_run))


def _run_with_interrupt(monkeypatch, cfg: dict, at_step: int) -> None:
    calls = {"n": 0}
    original = Loop._optimizer_step

    def step_then_maybe_crash(self) -> None:
        calls["n"] += 1
        if calls["n"] == at_step:
            raise KeyboardInterrupt("simulated crash")
        original(self)

    monkeypatch.setattr(Loop, "_optimizer_step", step_then_maybe_crash)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    monkeypatch.setattr(Loop, "_optimizer_step", original)


@pytest.mark.slow
def test_resume_after_crash_matches_uninterrupted_run(brats_tiny, tmp_path, monkeypatch) -> None:
    # 3 training cases, batch 1: 3 steps per epoch; crash in step 5's optimizer step, after its
    # finite loss committed the checkpoint of step 4; resume mid-epoch.
    ref_dir = train(
        tiny_config(
            brats_tiny.root, tmp_path / "ref", steps=5, checkpoint_every=1, scheduler="cosine"
        )
    )
    cfg = tiny_config(
        brats_tiny.root, tmp_path / "crash", steps=5, checkpoint_every=1, scheduler="cosine"
    )
    _run_with_interrupt(monkeypatch, cfg, at_step=5)
    assert load_checkpoint(tmp_path / "crash" / "last.pt")["step"] == 4
    train(cfg, resume=True)
    ref = load_checkpoint(ref_dir / "last.pt")
    got = load_checkpoint(tmp_path / "crash" / "last.pt")
    assert got["step"] == ref["step"] == 5
    for k, v in ref["model"].items():
        assert torch.equal(v, got["model"][k]), k
    for (k, a), b in zip(ref["optimizer"]["state"].items(), got["optimizer"]["state"].values()):
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(a[name], b[name]), (k, name)
    assert ref["scheduler"]["last_epoch"] == got["scheduler"]["last_epoch"]
    steps = pd.read_csv(tmp_path / "crash" / "metrics.csv")["step"].tolist()
    assert steps == [1, 2, 3, 4, 5]


def test_nan_loss_keeps_the_last_checkpoint_followed_by_a_finite_loss(
    brats_tiny, tmp_path, monkeypatch
) -> None:
    original = SegTask.loss
    calls = {"n": 0}

    def nan_on_third(self, model, batch, amp):
        calls["n"] += 1
        loss = original(self, model, batch, amp)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(SegTask, "loss", nan_on_third)
    cfg = tiny_config(brats_tiny.root, tmp_path / "nan", steps=4, checkpoint_every=1)
    # the weights after step 2 produced the NaN: the checkpoint of step 1 is the one kept
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 3.*step 1\), is kept"):
        train(cfg)
    assert load_checkpoint(tmp_path / "nan" / "last.pt")["step"] == 1
    assert pd.read_csv(tmp_path / "nan" / "metrics.csv")["step"].tolist() == [1]


def test_nan_before_any_checkpoint_does_not_advise_resume(brats_tiny, tmp_path, monkeypatch):
    original = SegTask.loss
    monkeypatch.setattr(
        SegTask, "loss", lambda self, m, b, amp: original(self, m, b, amp) * float("nan")
    )
    with pytest.raises(NonFiniteLossError) as info:
        train(tiny_config(brats_tiny.root, tmp_path / "nan0", steps=2))
    assert "no checkpoint had been written yet" in str(info.value)
    assert "--resume" not in str(info.value)
    assert not (tmp_path / "nan0" / "last.pt").exists()


def test_set_overrides_parse_yaml_values(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_config(tmp_path, tmp_path / "o")))
    cfg = load_config(
        path,
        [
            "train.lr=3e-4",
            "data.crop=[16,16,16]",
            "model.channels=[8, 16]",
            "train.amp=true",
            "train.loss.vae=0.5",
        ],
    )
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.data.crop == [16, 16, 16]
    assert cfg.model["channels"] == [8, 16]  # the model section: a network's plain arguments
    assert cfg.train.amp is True
    assert cfg.train.loss.to_dict() == {"dice": 1.0, "ce": None, "bce": None, "vae": 0.5}
    assert cfg.infer.overlap == 0.25  # from the file; untouched defaults filled in


@pytest.mark.parametrize(
    ("override", "hint"),
    [
        ("train.lrr=1", "train.lr"),
        ("trian.lr=1", "'train'"),
        ("model.chanels=[4]", "channels"),
        ("data.crop", "key=value"),
    ],
)
def test_unknown_override_key_gives_did_you_mean(tmp_path: Path, override: str, hint: str) -> None:
    with pytest.raises(ConfigError, match=hint):
        load_config(tiny_config(tmp_path, tmp_path / "o"), [override])


def test_unknown_key_in_file_is_rejected(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, tmp_path / "o")
    cfg["train"]["epoch"] = 3
    with pytest.raises(ConfigError, match="Did you mean 'epochs'"):
        load_config(cfg)


def test_split_is_deterministic_and_disjoint() -> None:
    from types import SimpleNamespace

    cases = [SimpleNamespace(case_id=f"c{i}") for i in range(10)]
    a = split_cases(cases, val_cases=None, val_fraction=0.2, seed=3)
    b = split_cases(cases, val_cases=None, val_fraction=0.2, seed=3)
    assert [c.case_id for c in a[1]] == [c.case_id for c in b[1]]
    assert len(a[1]) == 2 and not {c.case_id for c in a[0]} & {c.case_id for c in a[1]}
    with pytest.raises(ConfigError, match="Did you mean 'c1'"):
        split_cases(cases, val_cases=["c1x"], val_fraction=0.0, seed=0)


def test_resume_refuses_a_checkpoint_that_pickles_objects(brats_tiny, tmp_path) -> None:
    marker: list[str] = []

    class Payload:
        def __reduce__(self):
            return (marker.append, ("executed",))

    run = tmp_path / "run"
    run.mkdir()
    torch.save({"model": {}, "step": 1, "x": Payload()}, run / "last.pt")
    with pytest.raises(ValueError, match="refused") as info:
        train(tiny_config(brats_tiny.root, run), resume=True)
    assert marker == [] and "weights_only" not in str(info.value)


def test_resume_with_a_changed_model_names_the_keys(brats_tiny, tmp_path) -> None:
    run = train(tiny_config(brats_tiny.root, tmp_path / "run", steps=1))
    cfg = tiny_config(brats_tiny.root, run, steps=2)
    cfg["model"]["channels"] = [4, 6]
    with pytest.raises(ConfigError, match=r"model.channels: \[4, 8\] -> \[4, 6\]"):
        train(cfg, resume=True)


def test_output_flag_takes_any_folder_name(brats_tiny, tmp_path) -> None:
    out = tmp_path / "run #1: ü"
    run = train(tiny_config(brats_tiny.root, tmp_path / "unused", steps=1), output=out)
    assert run == out and (out / "last.pt").exists()
    assert yaml.safe_load((out / "config.yaml").read_text())["output"]["dir"] == str(out)
    assert (out / "last.pt").stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    import os

    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("where", ["file", "override"])
def test_old_val_every_key_names_val_every_steps_and_its_unit(tmp_path, where) -> None:
    cfg = tiny_config(tmp_path, tmp_path / "o")
    if where == "file":
        cfg["train"]["val_every"] = 5
    sets = ["train.val_every=5"] if where == "override" else []
    with pytest.raises(ConfigError) as err:
        load_config(cfg, sets)
    assert str(err.value) == (
        "unknown config key 'train.val_every': it is now 'train.val_every_steps', counted in "
        "optimizer steps (it counted epochs; an epoch is cases / batch_size / accumulation steps)."
    )


@pytest.mark.parametrize("name", sorted(list_configs()))
def test_packaged_configs_validate_in_optimizer_steps(name: str) -> None:
    train = read_yaml(name)["train"]
    assert "val_every" not in train and train["val_every_steps"] >= 1
    load = load_recon_config if name.startswith("recon") else load_config
    assert load(name).train.val_every_steps == train["val_every_steps"]


def test_train_builds_loop_settings_from_the_config(brats_tiny, tmp_path, monkeypatch) -> None:
    seen = {}
    monkeypatch.setattr(Loop, "run", lambda self: seen.setdefault("s", self.s).run_dir)
    path = tmp_path / "my config.yaml"
    extra = {"accumulation": 2, "max_minutes": 5.0, "grad_clip": 0.5, "checkpoint_every": 3}
    path.write_text(yaml.safe_dump(tiny_config(brats_tiny.root, tmp_path / "r", **extra)))
    sets = ["train.lr=0.02", "data.num_samples=2", "train.val_every_steps=4"]
    train(path, overrides=sets, output=tmp_path / "run")
    s = seen["s"]
    assert {k: getattr(s, k) for k in extra} == extra
    assert (s.lr, s.val_every_steps, s.amp, s.progress) == (0.02, 4, False, False)
    assert s.run_dir == tmp_path / "run" and s.config["output"]["dir"] == str(tmp_path / "run")
    assert s.per_step == "4 crops (train.batch_size 1 x data.num_samples 2 x train.accumulation 2)"
    assert s.resume_command() == (
        f"invseg train {shlex.quote(str(path))} --resume --set train.lr=0.02 --set "
        f"data.num_samples=2 --set train.val_every_steps=4 -o {shlex.quote(str(s.run_dir))}"
    )


def test_run_validates_every_val_every_steps_and_prints_crops_per_step(
    brats_tiny, tmp_path, capsys
) -> None:
    cfg = tiny_config(brats_tiny.root, tmp_path / "run", steps=3, val_every_steps=2)
    cfg["data"]["num_samples"] = 2
    run = train(cfg)  # 3 training cases at batch 1: an epoch is 3 steps, validation at 2 and 3
    out = capsys.readouterr().out
    assert (
        "schedule: 3 optimizer steps of 2 crops (train.batch_size 1 x data.num_samples 2); "
        "validation every 2 steps and at the end"
    ) in out
    df = pd.read_csv(run / "metrics.csv")
    assert df.loc[df["dice_mean"].notna(), "step"].tolist() == [2, 3]
