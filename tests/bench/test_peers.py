"""The peer wrappers: same numbers as the wrapped net, the memory they claim to save."""

from __future__ import annotations

import pytest
import torch

from invseg.bench import peers
from invseg.bench.harness import held_bytes
from invseg.engine import activation_bytes
from invseg.nets import UNet3D


def _loss(model, x):
    return model(x).square().mean()


def _grads(model, x):
    model.zero_grad(set_to_none=True)
    out = model(x)
    out.square().mean().backward()
    return out.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])


@pytest.fixture
def twin() -> UNet3D:
    torch.manual_seed(0)
    return UNet3D(3, 2, 2, channels=(4, 8, 16))


@pytest.mark.parametrize("policy", peers.POLICIES)
def test_level_checkpoint_gives_the_twins_output_and_gradients(twin, policy):
    x = torch.randn(1, 2, 16, 16, 16)
    out, ref = _grads(twin, x)
    got_out, got = _grads(peers.LevelCheckpoint(twin, policy=policy), x)
    torch.testing.assert_close(got_out, out)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-7)


def test_checkpoint_saves_less_than_selective_which_saves_less_than_the_twin(twin):
    x = torch.randn(1, 2, 16, 16, 16)
    full = activation_bytes(_loss, peers.LevelCheckpoint(twin), x)
    sac = activation_bytes(_loss, peers.LevelCheckpoint(twin, policy="selective"), x)
    store = activation_bytes(_loss, twin, x)
    assert full < sac < store
    # selective keeps at least every conv output of the blocks: 2 per residual block
    assert sac > full + 2 * 4 * 16**3 * 4


def test_level_checkpoint_rejects_sizes_it_cannot_downsample(twin):
    with pytest.raises(ValueError, match="multiples of 4"):
        peers.LevelCheckpoint(twin)(torch.randn(1, 2, 10, 16, 16))


def test_offload_on_cpu_keeps_every_saved_byte_where_it_was(twin):
    x = torch.randn(1, 2, 16, 16, 16)
    offloaded = peers.Offloaded(twin)
    # its own hooks hide its tensors; the loss outside still saves the logits
    assert activation_bytes(_loss, offloaded, x) == 2 * 16**3 * 4
    assert held_bytes(_loss, offloaded, x) == activation_bytes(_loss, twin, x)
    assert offloaded.host_bytes == 0
    _, ref = _grads(twin, x)
    _, got = _grads(offloaded, x)
    torch.testing.assert_close(got, ref)


def test_block_checkpoint_matches_plain_sequential():
    torch.manual_seed(0)
    blocks = [torch.nn.Conv3d(2, 2, 3, padding=1), torch.nn.GELU(), torch.nn.Conv3d(2, 2, 1)]
    plain = torch.nn.Sequential(*blocks)
    x = torch.randn(1, 2, 8, 8, 8)
    _, ref = _grads(plain, x)
    for policy in peers.POLICIES:
        _, got = _grads(peers.BlockCheckpoint(blocks, policy=policy), x)
        torch.testing.assert_close(got, ref)


def test_monai_peers_match_channels_and_checkpointing_saves_memory():
    plain = peers.monai_unet((4, 8, 16), 2, 2)
    ckpt = peers.monai_unet((4, 8, 16), 2, 2, checkpointed=True)
    assert sum(p.numel() for p in plain.parameters()) == sum(p.numel() for p in ckpt.parameters())
    x = torch.randn(1, 2, 16, 16, 16)
    assert activation_bytes(_loss, ckpt, x) < 0.5 * activation_bytes(_loss, plain, x)


def test_summary_states_share_and_time_ratio_per_peer():
    from invseg.bench.harness import Row

    rows = [
        Row("UNet3D", "store", 10, 1000, 1.0),
        Row("UNet3D", "checkpoint per level (torch)", 10, 250, 1.3),
        Row("UNet3D", "save_on_cpu (torch)", 10, 0, 1.5, host_bytes=2**20),
        Row("FullyInvResUNet", "invert", 5, 100, 1.2),
        Row("FullyInvResUNet", "store", 5, 800, 0.9),
    ]
    text = peers.summary(rows, twin=("UNet3D", "store"), ours=[("FullyInvResUNet", "invert")])
    assert "checkpoint per level (torch): 25% of the activations at 1.30x" in text
    assert "(+1.0 MiB moved to host memory)" in text
    assert "FullyInvResUNet invert: 10% of the activations at 1.20x" in text
    assert "FullyInvResUNet store" not in text
