"""Contract suite over every network: shapes, gradient parity, memory, MONAI interop, training."""

from __future__ import annotations

import copy

import pytest
import torch
from monai.inferers import sliding_window_inference
from monai.losses import DiceLoss

from invseg.engine import activation_bytes
from invseg.engine.testing import assert_round_trip, gradients, relative_error
from invseg.nets import FullyInvResUNet, PartiallyInvResUNet, fully_invertible_channels

CONFIGS = [
    ("unet3d", None),
    *[(n, m) for n in ("partially", "fully") for m in ("invert", "checkpoint", "store")],
]
INVERTIBLE = ("partially", "fully")


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("size", [(7, 9, 11), (8, 12, 16)], ids=["odd", "even"])
@pytest.mark.parametrize(("name", "memory"), CONFIGS)
def test_output_shape_for_any_size(make_net, name, memory, size, batch) -> None:
    net = make_net(name, memory)
    x = torch.randn(batch, 2, *size)
    y = net(x)
    assert y.shape == (batch, 3, *size)
    y.square().mean().backward()
    assert all(p.grad is not None for p in net.parameters())


def _parity(net, x, reference="store", mode="invert") -> dict[str, float]:
    """Relative gradient error per parameter of ``mode`` vs ``reference`` on the same weights."""

    def loss(out):
        logits, vae = out if isinstance(out, tuple) else (out, 0)
        return logits.square().sum() + vae

    grads = {}
    for memory in (mode, reference):
        net_mode = copy.deepcopy(net)
        net_mode.memory = memory
        torch.manual_seed(1)
        grads[memory] = gradients(net_mode, [x], loss)
    assert grads[mode].keys() == grads[reference].keys()
    assert len(grads[reference]) == len(list(net.parameters())) + x.requires_grad
    return {k: relative_error(grads[mode][k], v) for k, v in grads[reference].items()}


@pytest.mark.parametrize("mode", ["invert", "checkpoint"])
@pytest.mark.parametrize("vae", [False, True], ids=["plain", "vae"])
@pytest.mark.parametrize("name", INVERTIBLE)
def test_every_gradient_matches_store_in_float64(make_net, name, vae, mode) -> None:
    net = make_net(name, "store", vae=vae, input_image_size=(8, 8, 8) if vae else None)
    net = net.double().train()
    x = torch.randn(2, 2, 8, 8, 8, dtype=torch.float64, requires_grad=True)
    errors = _parity(net, x, mode=mode)
    assert max(errors.values()) < 1e-10, max(errors, key=errors.get)


@pytest.mark.parametrize("name", INVERTIBLE)
def test_dropout_and_vae_noise_are_replayed_exactly(make_net, name) -> None:
    net = make_net(name, "store", dropout=0.3, vae=True, input_image_size=(8, 8, 8))
    x = torch.randn(2, 2, 8, 8, 8, dtype=torch.float64)
    errors = _parity(net.double().train(), x)
    assert max(errors.values()) < 1e-10, max(errors, key=errors.get)


@pytest.mark.parametrize("name", INVERTIBLE)
def test_every_gradient_matches_store_in_float32(make_net, name) -> None:
    net = make_net(name, "store", blocks=2).train()
    errors = _parity(net, torch.randn(1, 2, 12, 8, 8))
    assert max(errors.values()) < 1e-4, max(errors, key=errors.get)


def test_fully_body_round_trip_in_float64() -> None:
    net = FullyInvResUNet(3, 2, 3, channels=(8, 16, 32), blocks=(2, 1, 1)).double()
    assert_round_trip(net.body, torch.randn(2, 8, 8, 8, 12, dtype=torch.float64))


def test_fully_channels_follow_the_documented_split() -> None:
    net = FullyInvResUNet(3, 2, 3, channels=(8, 16, 32))
    assert net.effective_channels == (8, 16, 32)
    assert fully_invertible_channels((8, 16, 32)) == ((8, 16, 32), (6, 12))
    assert len(net.body) == 1  # the whole body is one invertible block in one chain
    assert fully_invertible_channels((8, 20)) == ((8, 24), (5,))  # 20 / 8 rounds up to 3


@pytest.mark.parametrize("name", INVERTIBLE)
def test_invert_stores_fewer_activation_bytes_than_store(make_net, name) -> None:
    x = torch.randn(1, 2, 16, 16, 16)
    counts = {}
    for memory in ("invert", "store"):
        torch.manual_seed(0)
        net = make_net(name, memory)
        counts[memory] = activation_bytes(lambda n=net: n(x).sum())
    assert counts["invert"] < 0.4 * counts["store"]


def test_fully_invert_memory_does_not_grow_with_blocks() -> None:
    x = torch.randn(1, 2, 16, 16, 16)
    nets = [FullyInvResUNet(3, 2, 3, channels=(8, 16, 32), blocks=b) for b in (1, 3)]
    counts = [activation_bytes(net, x) for net in nets]
    voxels = x[0, 0].numel()
    assert counts[0] == counts[1] == 4 * voxels * (2 + 8)  # the input and the body output only


@pytest.mark.parametrize("name", ["unet3d", "partially", "fully"])
def test_runs_inside_monai_sliding_window_inference(make_net, name) -> None:
    net = make_net(name, vae=True, input_image_size=(8, 8, 8)).eval()
    x = torch.randn(1, 2, 12, 10, 9)
    with torch.no_grad():
        whole = sliding_window_inference(x, (12, 10, 9), 1, net)
        tiled = sliding_window_inference(x, (8, 8, 8), 2, net, overlap=0.5)
        torch.testing.assert_close(whole, net(x))
    assert tiled.shape == (1, 3, 12, 10, 9) and torch.isfinite(tiled).all()


@pytest.mark.parametrize("name", ["partially", "fully"])
def test_dice_loss_decreases_over_a_few_steps(make_net, name) -> None:
    net = make_net(name, "invert", channels=(8, 16), vae=True, input_image_size=(12, 12, 12))
    grid = torch.stack(torch.meshgrid(*[torch.arange(12.0)] * 3, indexing="ij"))
    label = ((grid - 5.5).square().sum(0) < 16).float()[None, None]  # a ball
    image = torch.cat([label + 0.1 * torch.randn_like(label), torch.randn_like(label)], 1)
    target = torch.cat([label, 1 - label, label], 1)
    dice = DiceLoss(sigmoid=True)
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(8):
        optimiser.zero_grad()
        logits, vae_loss = net(image)
        loss = dice(logits, target)
        (loss + vae_loss).backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"memory": "invret"}, "Did you mean 'invert'"),
        ({"norm": "batchh"}, "BATCH"),
        ({"channels": (8, 15)}, "even"),
        ({"blocks": (1, 2, 3, 4)}, "one per level"),
    ],
)
def test_bad_arguments_raise_helpful_errors(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        PartiallyInvResUNet(3, 2, 3, **{"channels": (8, 16), **kwargs})


def test_memory_can_be_switched_after_construction() -> None:
    net = PartiallyInvResUNet(3, 2, 3, channels=(8, 16), memory="store")
    net.memory = "invert"
    assert {m.memory for m in net.modules() if hasattr(m, "inverse_errors")} == {"invert"}


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_partially_anchored_at_every_block_has_store_gradients_and_checkpoint_bytes(
    make_net, dropout
) -> None:
    """Checkpoint's bytes less the skips: invert mode rebuilds those from the decoder."""
    net = make_net("partially", "store", blocks=2, dropout=dropout).double().train()
    x = torch.randn(2, 2, 8, 8, 8, dtype=torch.float64, requires_grad=True)
    anchored = PartiallyInvResUNet(
        3, 2, 3, channels=net.channels, blocks=2, dropout=dropout, anchor_every=1
    ).double()
    anchored.load_state_dict(net.state_dict())
    errors = _parity(anchored, x)
    assert max(errors.values()) < 1e-10, max(errors, key=errors.get)
    held = {}
    for memory in ("checkpoint", "invert"):
        anchored.memory = memory
        held[memory] = activation_bytes(lambda n=anchored: n(x).sum())
    anchored.memory = "store"
    skips = sum(2 * c * 8**3 // 8**i * 8 for i, c in enumerate(net.channels[:-1]))  # float64
    assert held["checkpoint"] - held["invert"] == skips
    assert held["checkpoint"] < activation_bytes(lambda: anchored(x).sum())


def test_fully_checkpoint_checkpoints_each_coupling_chain_not_the_whole_body() -> None:
    net = FullyInvResUNet(3, 2, 3, channels=(8, 16, 32), memory="checkpoint")
    chains = [m for m in net.body.modules() if type(m).__name__ == "InvertibleSequential"]
    assert net.memory == "checkpoint" and net.body.memory == "store"
    assert [c.memory for c in chains[1:]] == ["checkpoint"] * (len(chains) - 1) != []
    x = torch.randn(1, 2, 8, 8, 8)
    held = {}
    for memory in ("invert", "checkpoint", "store"):
        net.memory = memory
        held[memory] = activation_bytes(lambda: net(x).sum())
    assert held["invert"] < held["checkpoint"] < 0.6 * held["store"]
    assert net.body.memory == "store" and chains[1].memory == "store"
