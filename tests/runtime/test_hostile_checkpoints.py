"""A checkpoint from someone else is data: every loader refuses a hostile one in one line.

Each hostile file tries to run ``touch MARKER`` (or to make invseg allocate without bound).
Every entry point that reads a checkpoint (``load_model``, ``invseg predict``, ``invseg train
--resume``, ``invseg recon train --resume``, ``invseg recon predict``, the bundle export and
import) must refuse it with one line naming the file and the field, exit 2 on the command line,
and leave no marker behind.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from invseg.cli import main
from invseg.commands.bundle import export_to_bundle, import_from_bundle, read_weights
from invseg.nets import PartiallyInvResUNet
from invseg.runtime.restore import load_model
from invseg.tasks.config import load_config, load_recon_config
from invseg.tasks.recon import build_model
from tests.conftest import tiny_config

ROOT = Path(__file__).resolve().parents[2]
KWARGS = {
    "in_channels": 4,
    "out_channels": 3,
    "channels": [4, 8],
    "norm": ["group", {"num_groups": 2}],
}


class Payload:
    """Pickles as a call that creates the marker file on an unsafe load."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _touch(marker: Path) -> str:
    return f"__import__('os').system('touch {marker}')"


def seg_state() -> dict[str, Any]:
    torch.manual_seed(0)
    net = PartiallyInvResUNet(**KWARGS)
    meta = {
        "target": "invseg.nets.PartiallyInvResUNet",
        "kwargs": copy.deepcopy(KWARGS),
        "convention": "brats",
        "modalities": ["t1", "t1ce", "t2", "flair"],
        "crop": [32, 32, 32],
        "roi_size": [32, 32, 32],
    }
    return {"model": net.state_dict(), "meta": meta, "step": 2, "epoch": 0}


def _first_weight(state: dict[str, Any]) -> str:
    return next(k for k, v in state["model"].items() if v.dim() > 1)


def _set(path: str, value: Any) -> Callable[[dict, Path], Any]:
    def mutate(state: dict, marker: Path) -> dict:
        node = state
        *parents, last = path.split(".")
        for key in parents:
            node = node[key]
        node[last] = value(marker) if callable(value) else value
        return state

    return mutate


def _huge_view(state: dict, marker: Path) -> dict:
    key = _first_weight(state)
    state["model"][key] = torch.zeros(1).expand(2**40)  # one stored float, 10^12 elements
    return state


def _nan_weight(state: dict, marker: Path) -> dict:
    key = _first_weight(state)
    state["model"][key] = state["model"][key].clone().fill_(float("nan"))
    return state


def _pickle(state: dict, marker: Path) -> dict:
    state["extra"] = Payload(marker)
    return state


#: name -> (mutation of a good segmentation checkpoint, words the refusal must contain)
SEG_HOSTILE: dict[str, tuple[Callable[[dict, Path], Any], str]] = {
    "callable_target": (
        lambda s, m: _set("meta.kwargs", {"command": f"touch {m}"})(
            _set("meta.target", "os.system")(s, m), m
        ),
        "meta.target",
    ),
    "expression_argument": (
        _set("meta.kwargs.channels", lambda m: "$" + _touch(m)),
        "meta.kwargs.channels",
    ),
    "reference_argument": (_set("meta.kwargs.norm", "@meta#target"), "meta.kwargs.norm"),
    "nested_target": (
        _set("meta.kwargs.norm", lambda m: {"_target_": "os.system", "command": f"touch {m}"}),
        "meta.kwargs.norm",
    ),
    "wrong_type": (_set("meta.kwargs.channels", "four"), "meta.kwargs.channels"),
    "unknown_argument": (_set("meta.kwargs.command", "touch"), "meta.kwargs.command"),
    "huge_network": (_set("meta.kwargs.channels", [2**20, 2**21]), "do not fit"),
    "huge_tensor": (_huge_view, "model."),
    "huge_window": (_set("meta.roi_size", [10**9] * 3), "meta.roi_size"),
    "non_finite_weights": (_nan_weight, "NaN"),
    "pickled_object": (_pickle, "refused"),
    "truncated": (None, "truncated"),
}


def write_hostile(path: Path, state: dict[str, Any], variant: str, marker: Path) -> Path:
    mutate, _ = SEG_HOSTILE.get(variant, (None, ""))
    path.parent.mkdir(parents=True, exist_ok=True)
    if variant == "truncated":
        torch.save(state, path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        torch.save(mutate(state, marker), path)
    return path


def assert_one_line_refusal(text: str, path: Path, words: str) -> None:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, text
    assert str(path) in lines[0] and words in lines[0], lines[0]
    assert "Traceback" not in text


@pytest.mark.parametrize("variant", sorted(SEG_HOSTILE))
def test_load_model_refuses_hostile_checkpoint(tmp_path, variant) -> None:
    marker = tmp_path / "MARKER"
    path = write_hostile(tmp_path / "their.pt", seg_state(), variant, marker)
    with pytest.raises(ValueError) as info:
        load_model(path)
    assert_one_line_refusal(str(info.value), path, SEG_HOSTILE[variant][1])
    assert not marker.exists()


@pytest.mark.parametrize("variant", sorted(SEG_HOSTILE))
def test_predict_refuses_hostile_checkpoint(tmp_path, brats_tiny, capsys, variant) -> None:
    marker = tmp_path / "MARKER"
    path = write_hostile(tmp_path / "their.pt", seg_state(), variant, marker)
    case = brats_tiny.cases[0]
    rc = main(
        ["predict", "-m", str(path), "-i", str(case.images[0].parent), "-o", str(tmp_path / "out")]
    )
    assert rc == 2
    assert_one_line_refusal(capsys.readouterr().err, path, SEG_HOSTILE[variant][1])
    assert not marker.exists()
    assert not list((tmp_path / "out").glob("*.nii.gz")) if (tmp_path / "out").exists() else True


@pytest.mark.parametrize("variant", sorted(SEG_HOSTILE))
def test_bundle_export_refuses_hostile_checkpoint(tmp_path, variant) -> None:
    marker = tmp_path / "MARKER"
    path = write_hostile(tmp_path / "their.pt", seg_state(), variant, marker)
    with pytest.raises(ValueError) as info:
        export_to_bundle(path, tmp_path / "bundle")
    assert_one_line_refusal(str(info.value), path, SEG_HOSTILE[variant][1])
    assert not marker.exists() and not (tmp_path / "bundle" / "models" / "model.pt").exists()


RESUME_HOSTILE = {
    "callable_target": "meta.target",
    "expression_argument": "meta.kwargs",
    "wrong_type": "meta.kwargs",
    "huge_tensor": "model.",
    "non_finite_weights": "NaN",
    "pickled_object": "refused",
    "truncated": "truncated",
}


@pytest.mark.parametrize("variant", sorted(RESUME_HOSTILE))
def test_train_resume_refuses_hostile_checkpoint(tmp_path, brats_tiny, capsys, variant) -> None:
    marker, run = tmp_path / "MARKER", tmp_path / "run"
    cfg = tiny_config(brats_tiny.root, run)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    state = seg_state()
    state["config"] = load_config(cfg).to_dict()
    path = write_hostile(run / "last.pt", state, variant, marker)
    before = path.read_bytes()
    rc = main(["train", str(tmp_path / "cfg.yaml"), "--resume", "-o", str(run)])
    assert rc == 2
    assert_one_line_refusal(capsys.readouterr().err, path, RESUME_HOSTILE[variant])
    assert not marker.exists() and path.read_bytes() == before


# ------------------------------------------------------------------------------ reconstruction
TINY_RECON = [
    "data.shape=[16, 16]",
    "data.num_coils=2",
    "data.calib=4",
    "model.num_unrolls=2",
    "model.channels=4",
    "model.layers=2",
    "train.device=cpu",
]


def recon_state() -> dict[str, Any]:
    cfg = load_recon_config("recon_2d", TINY_RECON)
    return {"model": build_model(cfg).state_dict(), "config": cfg.to_dict(), "step": 1}


RECON_HOSTILE: dict[str, tuple[Callable[[dict, Path], Any] | None, str]] = {
    "expression_argument": (_set("config.model.channels", lambda m: "$" + _touch(m)), "config"),
    "wrong_type": (_set("config.model.num_unrolls", "many"), "model.num_unrolls"),
    "huge_network": (_set("config.model.channels", 2**24), "do not fit"),
    "huge_tensor": (_huge_view, "model."),
    "non_finite_weights": (_nan_weight, "NaN"),
    "pickled_object": (_pickle, "refused"),
    "truncated": (None, "truncated"),
}


def write_recon_hostile(path: Path, variant: str, marker: Path) -> Path:
    state = recon_state()
    mutate, _ = RECON_HOSTILE[variant]
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state if mutate is None else mutate(state, marker), path)
    if mutate is None:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


@pytest.mark.parametrize("variant", sorted(RECON_HOSTILE))
def test_recon_predict_refuses_hostile_checkpoint(tmp_path, capsys, variant) -> None:
    marker = tmp_path / "MARKER"
    path = write_recon_hostile(tmp_path / "their.pt", variant, marker)
    npz = tmp_path / "k.npz"
    k = np.ones((2, 16, 16), np.complex64)
    np.savez(npz, kspace=k, mask=np.ones((1, 16, 16), np.float32), coil_maps=k)
    rc = main(["recon", "predict", "-m", str(path), "-i", str(npz), "-o", str(tmp_path / "o")])
    assert rc == 2
    assert_one_line_refusal(capsys.readouterr().err, path, RECON_HOSTILE[variant][1])
    assert not marker.exists()


@pytest.mark.parametrize(
    "variant", ["huge_tensor", "non_finite_weights", "pickled_object", "truncated"]
)
def test_recon_resume_refuses_hostile_checkpoint(tmp_path, capsys, variant) -> None:
    marker, run = tmp_path / "MARKER", tmp_path / "run"
    path = write_recon_hostile(run / "last.pt", variant, marker)
    sets = [arg for o in TINY_RECON for arg in ("--set", o)]
    rc = main(["recon", "train", "recon_2d", *sets, "--resume", "-o", str(run)])
    assert rc == 2
    assert_one_line_refusal(capsys.readouterr().err, path, RECON_HOSTILE[variant][1])
    assert not marker.exists()


# ------------------------------------------------------------------------------ bundle import
BUNDLE_HOSTILE = {
    "callable_target": (
        {"network_def": {"_target_": "os.system", "command": "touch M"}},
        "_target_",
    ),
    "expression_argument": (
        {"network_def": {"channels": "$" + "print(1)"}},
        "network_def#channels",
    ),
    "expression_behind_reference": ({"channels": "$" + "print(1)"}, "network_def#channels"),
}


@pytest.mark.parametrize("variant", sorted(BUNDLE_HOSTILE))
def test_bundle_import_reads_the_config_as_data(tmp_path, variant) -> None:
    marker = tmp_path / "MARKER"
    source = json.loads((ROOT / "configs/bundle_brats/configs/inference.json").read_text())
    change, words = BUNDLE_HOSTILE[variant]
    for key, value in change.items():
        text = (
            json.dumps(value)
            .replace("touch M", f"touch {marker}")
            .replace("print(1)", _touch(marker))
        )
        value = json.loads(text)
        if isinstance(value, dict) and isinstance(source.get(key), dict):
            source[key].update(value)
        else:
            source[key] = value
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs/inference.json").write_text(json.dumps(source))
    (tmp_path / "models").mkdir()
    torch.save(PartiallyInvResUNet(3, 4, 3).state_dict(), tmp_path / "models/model.pt")
    with pytest.raises(ValueError) as info:
        import_from_bundle(tmp_path, tmp_path / "best.pt")
    assert words in str(info.value) and "\n" not in str(info.value)
    assert not marker.exists() and not (tmp_path / "best.pt").exists()


def test_bundle_weights_refusal_is_in_our_words(tmp_path) -> None:
    marker = tmp_path / "MARKER"
    path = tmp_path / "model.pt"
    torch.save({"w": torch.ones(1), "x": Payload(marker)}, path)
    with pytest.raises(ValueError) as info:
        read_weights(path)
    msg = str(info.value)
    assert "pickles Python objects" in msg and "weights_only" not in msg and "\n" not in msg
    assert not marker.exists()
