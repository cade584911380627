"""bench quality's configs: a row is an invseg config whose model section is the zoo entry."""

from __future__ import annotations

from invseg.bench.models import model_section
from invseg.bench.quality import PRESETS
from invseg.bench.quality_config import row_config
from invseg.tasks.config import load_config


def test_row_config_is_a_valid_invseg_train_config(tmp_path) -> None:
    cfg = row_config("segresnetvae", root=tmp_path, crop=32, preset=PRESETS["quick"], seed=2,
                     device="cpu", run_dir=tmp_path / "run")  # fmt: skip
    resolved = load_config(cfg)
    t = resolved.train
    assert (t.steps, t.lr, t.seed, t.scheduler, t.optimizer) == (200, 5e-3, 2, "cosine", "adamw")
    assert (t.loss.dice, t.loss.bce, t.loss.vae) == (1.0, 1.0, 0.1)  # MONAI's VAE loss at 0.1
    assert resolved.data.val_fraction == 0.0 and resolved.data.num_samples == 2
    assert resolved.model == model_section(
        "segresnetvae", in_channels=4, out_channels=3, crop=(32,) * 3, base=PRESETS["quick"].base
    )
    assert resolved.model["_target_"] == "SegResNetVAE"
    assert resolved.model["input_image_size"] == [32, 32, 32]
    assert resolved.to_dict()["output"]["dir"] == str(tmp_path / "run")
