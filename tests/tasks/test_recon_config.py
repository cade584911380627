"""The packaged recon configs load, state every MoDL argument and build their model."""

from __future__ import annotations

import inspect

import pytest

from invseg.recon import MoDL
from invseg.runtime.config import ConfigError, read_yaml
from invseg.tasks.config import ReconModel, load_recon_config
from invseg.tasks.recon import build_model

CONFIGS = ["recon_2d", "recon_3d_slab", "recon_cine"]
SMALL = ["model.channels=4", "model.layers=2", "model.num_unrolls=3"]


def test_typed_model_section_mirrors_modl_arguments_and_defaults() -> None:
    params = inspect.signature(MoDL).parameters
    section = ReconModel()
    assert section.keys() == list(params)
    for name, p in params.items():
        assert section[name] == p.default, name


@pytest.mark.parametrize("name", CONFIGS)
def test_packaged_recon_config_states_every_model_key(name: str) -> None:
    assert sorted(read_yaml(name)["model"]) == sorted(ReconModel().keys())
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
