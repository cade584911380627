"""bench quality's configs: every zoo entry as a ``model`` section, a row as an invseg config."""

from __future__ import annotations

import pytest
import torch

from invseg.bench.models import ZOO, build
from invseg.bench.quality import PRESETS
from invseg.bench.quality_config import model_section, row_config
from invseg.runtime.config import instantiate_model
from invseg.tasks.config import load_config


@pytest.mark.parametrize("name", list(ZOO))
def test_model_section_builds_the_zoo_network_with_the_same_weights(name: str) -> None:
    section = model_section(name, in_channels=4, out_channels=3, crop=(16, 16, 16), base=4)
    torch.manual_seed(0)
    net = instantiate_model(section)
    torch.manual_seed(0)
    zoo = build(name, in_channels=4, out_channels=3, crop=(16, 16, 16), base=4).net
    assert type(net) is type(zoo)
    a, b = net.state_dict(), zoo.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert getattr(net, "memory", None) == getattr(zoo, "memory", None)


def test_row_config_is_a_valid_invseg_train_config(tmp_path) -> None:
    cfg = row_config("segresnetvae", root=tmp_path, crop=32, preset=PRESETS["quick"], seed=2,
                     device="cpu", run_dir=tmp_path / "run")  # fmt: skip
    resolved = load_config(cfg)
    t = resolved.train
    assert (t.steps, t.lr, t.seed, t.scheduler, t.optimizer) == (200, 5e-3, 2, "cosine", "adamw")
    assert (t.loss.dice, t.loss.bce, t.loss.vae) == (1.0, 1.0, 0.1)  # MONAI's VAE loss at 0.1
    assert resolved.data.val_fraction == 0.0 and resolved.data.num_samples == 2
    assert resolved.model["input_image_size"] == [32, 32, 32]
    assert resolved.to_dict()["output"]["dir"] == str(tmp_path / "run")


def test_unknown_zoo_name_is_refused_with_a_hint() -> None:
    with pytest.raises(ValueError, match="Did you mean 'unet3d'"):
        model_section("unet3", in_channels=4, out_channels=3, crop=(16,) * 3, base=4)
