"""Loss keys mean what they say: ce for labels, bce for regions, never silently ignored."""

from __future__ import annotations

import pytest
import torch

from invseg.cli import main
from invseg.runtime.config import ConfigError
from invseg.tasks.seg_loss import loss_weights, segmentation_loss


@pytest.mark.parametrize(
    ("kind", "weights", "expected"),
    [
        ("regions", {"dice": 1.0}, {"dice": 1.0, "bce": 1.0}),
        ("regions", {"dice": 0.5, "bce": 0.0, "ce": 0.0}, {"dice": 0.5, "bce": 0.0}),
        ("classes", {"dice": 1.0, "ce": 2.0}, {"dice": 1.0, "ce": 2.0}),
        ("classes", {"dice": 1.0, "bce": None}, {"dice": 1.0, "ce": 1.0}),
    ],
)
def test_weights_resolve_per_convention(kind, weights, expected) -> None:
    assert loss_weights(weights, kind, "x") == expected


@pytest.mark.parametrize(
    ("kind", "key", "use"), [("regions", "ce", "bce"), ("classes", "bce", "ce")]
)
def test_a_weight_that_does_not_apply_names_key_and_convention(kind, key, use) -> None:
    with pytest.raises(ConfigError) as info:
        loss_weights({"dice": 1.0, key: 1.0}, kind, "conv")
    assert str(info.value).startswith(f"train.loss.{key}:") and "'conv'" in str(info.value)
    assert f"train.loss.{use}" in str(info.value)


def test_region_loss_is_dice_plus_per_channel_bce() -> None:
    from monai.losses import DiceLoss

    torch.manual_seed(0)
    z = torch.randn(2, 3, 4, 4, 4)
    y = (torch.rand(2, 3, 4, 4, 4) > 0.5).float()
    got = segmentation_loss({"dice": 0.5, "bce": 2.0}, "regions")(z, y)
    dice = DiceLoss(sigmoid=True, smooth_nr=0.0, smooth_dr=1e-5, squared_pred=True)(z, y)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(z, y)
    assert torch.allclose(got, 0.5 * dice + 2.0 * bce)


def test_label_loss_weights_reach_monai(monkeypatch) -> None:
    z = torch.randn(1, 4, 4, 4, 4)
    y = torch.randint(0, 4, (1, 1, 4, 4, 4))
    ce_only = segmentation_loss({"dice": 0.0, "ce": 1.0}, "classes")(z, y)
    expected = torch.nn.functional.cross_entropy(z, y[:, 0])
    assert torch.allclose(ce_only, expected, atol=1e-6)


def test_train_refuses_ce_on_brats_naming_the_key(brats_tiny, tmp_path, capsys) -> None:
    argv = ["train", "demo", "--set", f"data.root={brats_tiny.root}", "--set", "train.loss.ce=1.0",
            "-o", str(tmp_path / "run")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.loss.ce:" in err[0] and "train.loss.bce" in err[0]
    assert not (tmp_path / "run").exists()
