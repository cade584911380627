"""invseg blocks in a MONAI-style encoder trained with a MONAI loss (examples/monai_encoder.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "monai_encoder.py"


@pytest.fixture(scope="module")
def result() -> dict:
    spec = importlib.util.spec_from_file_location("monai_encoder", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(quick=True)


def test_invertible_stages_hold_far_less_activation_memory(result: dict) -> None:
    nbytes = result["bytes"]
    assert nbytes["invert"] * 3 < nbytes["store"]
    assert nbytes["invert"] * 3 < nbytes["monai"]


def test_invert_gives_the_gradients_of_plain_autograd(result: dict) -> None:
    assert result["grad_max_diff"] < 1e-5


def test_dice_loss_decreases_when_training_the_invertible_encoder(result: dict) -> None:
    losses = result["losses"]
    assert losses[-1] < 0.5 * losses[0]
