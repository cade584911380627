"""Checkpoints: weights-only loads refuse pickled objects; RunMeta; one-line mismatch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from invseg.runtime.checkpoint import RunMeta, load_checkpoint, save_checkpoint
from invseg.runtime.restore import load_model, load_weights

MARKER: list[str] = []


class Payload:
    """Pickles as a call that would run code on load."""

    def __reduce__(self):
        return (MARKER.append, ("executed",))


def malicious(path: Path) -> Path:
    torch.save({"model": {"w": torch.ones(1)}, "meta": Payload()}, path)
    return path


def test_pickled_object_is_refused_without_suggesting_weights_only_false(tmp_path) -> None:
    with pytest.raises(ValueError) as info:
        load_checkpoint(malicious(tmp_path / "evil.pt"))
    msg = str(info.value)
    assert "refused" in msg and "weights_only" not in msg and "\n" not in msg
    assert MARKER == []


def test_load_model_refuses_a_malicious_checkpoint(tmp_path) -> None:
    with pytest.raises(ValueError, match="refused"):
        load_model(malicious(tmp_path / "evil.pt"))
    assert MARKER == []


def test_run_meta_round_trip_and_load_model(tmp_path) -> None:
    net = nn.Conv3d(2, 3, 1)
    meta = RunMeta(
        target="torch.nn.Conv3d",
        kwargs={"in_channels": 2, "out_channels": 3, "kernel_size": 1},
        modalities=["t1", "t2"],
        roi_size=[8, 8, 8],
    )
    save_checkpoint({"model": net.state_dict(), "meta": meta}, tmp_path / "m.pt")
    raw = torch.load(tmp_path / "m.pt", weights_only=True)["meta"]
    assert isinstance(raw, dict) and raw["roi_size"] == [8, 8, 8]
    with pytest.raises(ValueError, match="meta.target: 'torch.nn.Conv3d' is not a network"):
        load_model(tmp_path / "m.pt")  # the file cannot name a class to import ...
    model, back = load_model(tmp_path / "m.pt", model_class="torch.nn.Conv3d")  # ... the user can
    assert back == meta and back.modalities == ["t1", "t2"]
    assert torch.equal(model.weight, net.weight) and not model.training


def test_registered_network_round_trips_through_its_short_name(tmp_path) -> None:
    from invseg.nets import UNet3D

    net = UNet3D(3, 2, 2, channels=(4, 8), norm=("group", {"num_groups": 2}))
    kwargs = {"in_channels": 2, "out_channels": 2, "channels": [4, 8],
              "norm": ["group", {"num_groups": 2}]}  # fmt: skip
    meta = RunMeta(target="UNet3D", kwargs=kwargs)
    save_checkpoint({"model": net.state_dict(), "meta": meta}, tmp_path / "m.pt")
    model, _ = load_model(tmp_path / "m.pt")
    x = torch.randn(1, 2, 8, 8, 8)
    net.eval()
    assert torch.equal(model(x), net(x))


def test_meta_without_target_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no model description"):
        RunMeta.from_dict({"convention": "brats"}, source="x.pt")


def test_changed_model_is_one_line_naming_the_keys() -> None:
    with pytest.raises(ValueError) as info:
        load_weights(nn.Sequential(nn.Linear(2, 3)), nn.Linear(2, 3).state_dict(), source="r.pt")
    msg = str(info.value)
    assert "\n" not in msg and "missing: 0.weight, 0.bias" in msg and "unexpected: weight" in msg
