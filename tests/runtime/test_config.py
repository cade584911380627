"""The typed config: coercion once, errors naming key path, value and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from invseg.runtime.coerce import coerce
from invseg.runtime.config import (
    ConfigError,
    find_config,
    instantiate_model,
    list_configs,
    read_yaml,
    yaml_load,
)
from invseg.tasks.config import load_config, load_recon_config
from tests.conftest import tiny_config


@pytest.fixture
def seg(tmp_path: Path) -> dict:
    return tiny_config(tmp_path, tmp_path / "o")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.batch_size=two", "train.batch_size: 'two' is not an integer"),
        ("train.batch_size=0", "train.batch_size: 0 must be >= 1"),
        ("data.crop=16", "data.crop: 16 must be a list of 3 integers"),
        ("data.augment='no'", "data.augment: 'no' must be true or false"),
        ("train.lr=abc", "train.lr: 'abc' is not a number"),
        ("train.lr=-1", "train.lr: -1.0 must be > 0"),
        ("train.optimizer=adamm", "train.optimizer: 'adamm' is not allowed; choose adamw"),
        ("data.val_fraction=1.5", "data.val_fraction: 1.5 must be < 1"),
        ("train.num_workers=-1", "train.num_workers: -1 must be >= 0"),
        ("infer.roi_size=[8, 8]", "infer.roi_size: [8, 8] must be a list of 3 integers"),
        ("train.loss.vea=1", "unknown config key 'train.loss.vea'. Did you mean 'vae'?"),
    ],
)
def test_bad_value_names_key_value_and_what_is_allowed(seg, override, message) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(seg, [override])
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_values_are_coerced_once_at_load(seg) -> None:
    cfg = load_config(seg, ["train.lr=3e-4", "train.steps=1e2", "data.val_cases=[1, 2]"])
    assert cfg.train.lr == pytest.approx(3e-4) and isinstance(cfg.train.lr, float)
    assert cfg.train.steps == 100 and isinstance(cfg.train.steps, int)
    assert cfg.data.val_cases == ["1", "2"]


def test_sections_are_read_by_attribute_only(seg) -> None:
    cfg = load_config(seg, ["train.lr=3e-4"])
    assert cfg.train.lr == pytest.approx(3e-4) and cfg.train.loss.dice == 1.0
    assert cfg.to_dict()["train"]["lr"] == cfg.train.lr  # the one way to plain data
    with pytest.raises(TypeError, match=r"^SegConfig is read by attribute: write \.train, not "):
        cfg["train"]
    with pytest.raises(TypeError, match=r"SegTrain is read by attribute: write \.lr"):
        cfg.train["lr"]
    for gone in ("get", "keys", "items"):
        assert not hasattr(cfg.train, gone), gone
    with pytest.raises(TypeError, match="is read by attribute"):
        "lr" in cfg.train  # noqa: B015


def test_yaml_files_read_floats_without_a_dot_as_yaml_1_2(tmp_path: Path, seg) -> None:
    seg["train"]["lr"] = "PLACEHOLDER"
    text = yaml.safe_dump(seg).replace("PLACEHOLDER", "3e-4")
    (tmp_path / "c.yaml").write_text(text)
    assert load_config(tmp_path / "c.yaml").train.lr == pytest.approx(3e-4)
    assert yaml_load("a: 1e-3")["a"] == pytest.approx(1e-3)


def test_recon_config_uses_the_same_machinery() -> None:
    assert load_recon_config("recon_2d", ["train.lr=3e-4"]).train.lr == pytest.approx(3e-4)
    for override, message in [
        ("train.batch_size=0", "train.batch_size: 0 must be >= 1"),
        ("train.steps=0", "train.steps: 0 must be >= 1"),
        ("train.lr=abc", "train.lr: 'abc' is not a number"),
        ("model.num_unroll=3", "Did you mean 'num_unrolls'"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_recon_config("recon_2d", [override])


def test_unknown_section_and_model_key_get_did_you_mean(seg) -> None:
    with pytest.raises(ConfigError, match="unknown config key 'trian'. Did you mean 'train'"):
        load_config(seg, ["trian.lr=1"])
    with pytest.raises(ConfigError, match="Did you mean 'channels'"):
        load_config(seg, ["model.chanels=[4]"])


def test_packaged_configs_are_found_by_name_and_listed() -> None:
    names = list_configs()
    assert {"demo", "brats_partially_invres", "recon_2d"} <= set(names)
    assert load_config("brats_fully_invres").model["_target_"] == "invseg.nets.FullyInvResUNet"
    assert find_config("configs/demo.yaml").name == "demo.yaml"
    with pytest.raises(ConfigError, match="Did you mean 'demo'"):
        find_config("demoo")


@pytest.mark.parametrize("name", ["brats_partially_invres", "brats_fully_invres", "demo"])
def test_shipped_configs_checkpoint_regularly(name: str) -> None:
    cfg = load_config(name)
    assert cfg.train.checkpoint_every is not None and cfg.train.checkpoint_every <= 100


def test_a_model_argument_the_class_rejects_is_named_in_one_line() -> None:
    model = {"_target_": "invseg.nets.PartiallyInvResUNet", "channels": [8, 16], "anchor_every": 0}
    with pytest.raises(ConfigError) as info:
        instantiate_model(model)
    message = str(info.value)
    assert message.startswith("cannot build model invseg.nets.PartiallyInvResUNet: anchor_every")
    assert "got 0" in message and "\n" not in message and "Failed to instantiate" not in message


@pytest.mark.parametrize("target", ["UNet3D", "invseg.nets.UNet3D"])
def test_a_config_names_a_registered_network_short_or_full(seg, target: str) -> None:
    seg["model"] = {"_target_": target, "in_channels": 4, "out_channels": 3, "channels": [4, 8]}
    net = instantiate_model(load_config(seg).model)
    assert type(net).__name__ == "UNet3D" and net.channels == (4, 8)


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ({"_target_": "torch.nn.Conv3d"}, "model._target_: 'torch.nn.Conv3d' is not a network"),
        ({"_target_": "os.system", "command": "x"}, "model._target_: 'os.system' is not a "),
        ({"_target_": "UNet3d"}, "Did you mean 'UNet3D'?"),
        ({"_target_": "UNet3D", "channels": "$[4, 8]"}, "model.channels: '$[4, 8]' is an "),
        ({"_target_": "UNet3D", "channels": "four"}, "model.channels: 'four' does not fit"),
        ({"channels": [4, 8]}, "model._target_ is missing"),
    ],
)
def test_a_model_section_is_resolved_through_the_registry_only(seg, model, message) -> None:
    seg["model"] = model
    with pytest.raises(ConfigError) as info:
        load_config(seg)
    assert message in str(info.value) and "\n" not in str(info.value)


FINITE = "must be a finite number (.inf and .nan are not allowed)"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lr=.inf", f"train.lr: inf {FINITE}"),
        ("train.lr=.nan", f"train.lr: nan {FINITE}"),
        ("train.lr='-inf'", f"train.lr: -inf {FINITE}"),
        ("train.lr=1e400", f"train.lr: inf {FINITE}"),  # beyond float64: YAML reads inf
        ("train.lr=1e38", "train.lr: 1e+38 must be <= 10"),
        ("train.lr=11", "train.lr: 11.0 must be <= 10"),
        ("train.lr=0", "train.lr: 0.0 must be > 0"),
        ("train.max_minutes=.inf", f"train.max_minutes: inf {FINITE}"),  # null means no limit
        ("train.grad_clip=.nan", f"train.grad_clip: nan {FINITE}"),
        ("data.spacing=[1, .inf, 1]", f"data.spacing[1]: inf {FINITE}"),
        ("train.loss.dice=.nan", f"train.loss.dice: nan {FINITE}"),
    ],
)
def test_non_finite_and_absurd_floats_are_errors_naming_the_key(seg, override, message) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(seg, [override])
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lr=.inf", f"train.lr: inf {FINITE}"),
        ("train.lr=.NaN", f"train.lr: nan {FINITE}"),
        ("train.lr=1e38", "train.lr: 1e+38 must be <= 10"),
        ("model.cg_tol=.inf", f"model.cg_tol: inf {FINITE}"),
        ("data.noise_std=.inf", f"data.noise_std: inf {FINITE}"),
    ],
)
def test_recon_configs_refuse_non_finite_floats_too(override, message) -> None:
    with pytest.raises(ConfigError) as info:
        load_recon_config("recon_2d", [override])
    assert str(info.value) == message


def test_a_float_field_may_opt_in_to_non_finite_values() -> None:
    assert coerce(float("inf"), float, "x", {"finite": False}) == float("inf")
    assert coerce("1.5", float, "x") == 1.5
    with pytest.raises(ConfigError, match=f"x: {'9' * 400} must be a finite number"):
        coerce(int("9" * 400), float, "x")  # an int beyond the float range


def test_duplicate_yaml_key_names_file_key_and_line(tmp_path: Path, seg) -> None:
    text = yaml.safe_dump(seg, sort_keys=False).replace("  lr: 0.01\n", "  lr: 0.01\n  lr: 3\n")
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    line = text.splitlines().index("  lr: 3") + 1
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert (
        str(info.value) == f"{path}: duplicate key 'lr' at line {line} (first at line {line - 1})"
    )
    with pytest.raises(ConfigError, match="duplicate key 'train' at line 3 .first at line 1"):
        yaml_load("train: {}\ndata: {}\ntrain: {lr: 1}\n")


def test_yaml_merge_keys_may_still_override_and_packaged_configs_have_no_duplicates() -> None:
    merged = yaml_load("base: &b {lr: 1, steps: 2}\ntrain:\n  <<: *b\n  lr: 3\n")
    assert merged["train"] == {"lr": 3, "steps": 2}
    for name in list_configs():
        assert read_yaml(name)  # raises on a duplicate key
