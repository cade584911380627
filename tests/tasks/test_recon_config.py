"""The packaged recon configs load, state every MoDL argument and build their model."""

from __future__ import annotations

import inspect

import pytest

from invseg.recon import MoDL
from invseg.runtime.config import ConfigError, read_yaml
from invseg.runtime.settings import LoopSettings
from invseg.runtime.task import check_resume
from invseg.tasks.config import ReconModel, load_recon_config, load_stored_recon_config
from invseg.tasks.recon import RESUME_MUTABLE, build_model

CONFIGS = ["recon_2d", "recon_3d_slab", "recon_cine"]
SMALL = ["model.channels=4", "model.layers=2", "model.num_unrolls=3"]


def test_typed_model_section_mirrors_modl_arguments_and_defaults() -> None:
    params = inspect.signature(MoDL).parameters
    section = ReconModel().to_dict()
    assert list(section) == list(params)
    for name, p in params.items():
        assert section[name] == p.default, name


@pytest.mark.parametrize("name", CONFIGS)
def test_packaged_recon_config_states_every_model_key(name: str) -> None:
    assert sorted(read_yaml(name)["model"]) == sorted(ReconModel().to_dict())
    model = load_recon_config(name).model
    assert (model.cg_iters, model.cg_tol, model.mu_init, model.mu_min) == (30, 1e-5, 0.1, 0.05)
    assert (model.anchor_every, model.drift_tol, model.drift_every) == (1, 1e-3, None)
    assert model.lipschitz_grid is None


@pytest.mark.parametrize("name", CONFIGS)
def test_packaged_recon_config_builds_small_model(name: str) -> None:
    cfg = load_recon_config(name, SMALL)
    model = build_model(cfg)
    assert model.num_unrolls == 3 and not model.auto_anchors
    dc = model.chain.blocks[0].dc
    assert (dc.cg_iters, dc.cg_tol, dc.mu_min) == (30, 1e-5, 0.05)
    assert float(dc.mu.detach()) == pytest.approx(0.1, rel=1e-6)
    assert model.anchor_every == 1  # every unroll's input kept
    assert model.certified_lipschitz() <= 0.9
    assert model.chain.drift_tol is None  # drift_every null: never measured
    d = cfg.data.shape
    assert model.chain.blocks[0].denoiser.grid == ((32,) * 2 if len(d) == 2 else (24,) * 3)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("model.cg_tol=0", "model.cg_tol"),
        ("model.cg_tol=-1e-5", "model.cg_tol"),
        ("model.mu_min=0", "model.mu_min"),
        ("model.mu_init=0.01", "model.mu_init"),
        ("model.anchor_every=often", "model.anchor_every"),
        ("model.anchor_every=0", "model.anchor_every"),
        ("model.anchor_every=1.5", "model.anchor_every"),
        ("model.anchor_every=auto model.drift_tol=null", "model.drift_tol"),
        ("model.drift_every=0", "model.drift_every"),
        ("model.lipschitz_grid=8", "model.lipschitz_grid"),
        ("model.cg_iters=0", "model.cg_iters"),
    ],
)
def test_bad_recon_model_value_is_one_line_error_naming_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_recon_config("recon_2d", override.split())
    message = str(err.value)
    assert message.startswith(key) and "\n" not in message


def test_int_anchor_spacing_and_drift_sampling_reach_the_model() -> None:
    cfg = load_recon_config(
        "recon_2d", [*SMALL, "model.anchor_every=2", "model.drift_every=5", "model.mu_init=0.05"]
    )
    model = build_model(cfg)
    assert not model.auto_anchors and model.anchor_every == 2
    assert model.chain.drift_tol == pytest.approx(1e-3) and model.chain.drift_every == 5


def test_auto_anchor_spacing_reaches_the_model() -> None:
    model = build_model(load_recon_config("recon_2d", [*SMALL, "model.anchor_every=auto"]))
    assert model.auto_anchors and model.anchor_every == 2  # float32 drift budget 1e-3


@pytest.mark.parametrize("where", ["file", "override"])
def test_old_val_every_key_names_val_every_steps(where: str) -> None:
    raw = {"train": {"val_every": 5}} if where == "file" else {}
    sets = ["train.val_every=5"] if where == "override" else []
    with pytest.raises(ConfigError) as err:
        load_recon_config(raw, sets)
    assert str(err.value) == (
        "unknown config key 'train.val_every': it is now 'train.val_every_steps', counted in "
        "optimizer steps (the unit it had: only the name changed)."
    )


@pytest.mark.parametrize("name", CONFIGS)
def test_packaged_recon_config_validates_in_steps(name: str) -> None:
    assert read_yaml(name)["train"]["val_every_steps"] == 50
    assert load_recon_config(name, ["train.val_every_steps=3"]).train.val_every_steps == 3


def test_checkpoint_config_with_the_old_key_still_loads() -> None:
    stored = {"train": {"val_every": 7, "steps": 9}, "output": {"dir": "r"}}
    cfg = load_stored_recon_config(stored)
    assert (cfg.train.val_every_steps, cfg.train.steps) == (7, 9)
    assert stored["train"] == {"val_every": 7, "steps": 9}  # not modified
    assert load_stored_recon_config(cfg.to_dict()).train.val_every_steps == 7


def test_recon_loop_settings_take_the_config_and_keep_defaults_for_seg_keys() -> None:
    train = {"val_every_steps": 5, "lr": 2e-3, "grad_clip": 1.0}
    cfg = load_recon_config({"train": train, "output": {"dir": "runs/recon"}})
    s = LoopSettings.from_config(cfg, total_steps=4, command="invseg recon train", source=cfg)
    assert (s.val_every_steps, s.lr, s.grad_clip, s.checkpoint_every) == (5, 2e-3, 1.0, 50)
    assert (s.accumulation, s.amp, s.max_minutes, s.weight_decay) == (1, False, None, None)
    assert s.resume_command() == "invseg recon train CONFIG --resume -o runs/recon"
    assert s.config == cfg.to_dict()


def test_resume_accepts_a_run_whose_checkpoint_has_the_old_key() -> None:
    new = load_recon_config("recon_2d", ["train.val_every_steps=10"]).to_dict()
    old = load_recon_config("recon_2d").to_dict()
    old["train"]["val_every"] = old["train"].pop("val_every_steps")
    check_resume(old, new, RESUME_MUTABLE)  # renamed and changed: both allowed
    old["train"]["batch_size"] = 7
    with pytest.raises(ConfigError, match=r"train.batch_size: 7 -> 2 differs"):
        check_resume(old, new, RESUME_MUTABLE)
