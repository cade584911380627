"""The peers: same numbers as the twin, the memory they claim to save."""

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


def _rows(twin):
    return {memory: model for name, memory, model in peers.unet_peers(twin, (4, 8, 16), 2, 2)}


def test_the_checkpoint_row_is_the_twin_itself_in_checkpoint_mode(twin):
    row = _rows(twin)["checkpoint per level (torch)"]
    assert type(row) is UNet3D and row.memory == "checkpoint" and twin.memory == "store"
    for (name, a), b in zip(row.state_dict().items(), twin.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("memory", ["checkpoint per level (torch)", "selective checkpoint (torch)"])
def test_checkpoint_rows_give_the_twins_output_and_gradients(twin, memory):
    x = torch.randn(1, 2, 16, 16, 16)
    out, ref = _grads(twin, x)
    got_out, got = _grads(_rows(twin)[memory], x)
    torch.testing.assert_close(got_out, out)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-7)


def test_checkpoint_saves_less_than_selective_which_saves_less_than_the_twin(twin):
    x = torch.randn(1, 2, 16, 16, 16)
    rows = _rows(twin)
    full = activation_bytes(_loss, rows["checkpoint per level (torch)"], x)
    sac = activation_bytes(_loss, rows["selective checkpoint (torch)"], x)
    store = activation_bytes(_loss, twin, x)
    assert full < sac < store
    # selective keeps at least every conv output of the blocks: 2 per residual block
    assert sac > full + 2 * 4 * 16**3 * 4


def test_selective_checkpoint_shares_the_twin_and_pads_like_it(twin):
    selective = peers.SelectiveCheckpoint(twin)
    assert selective.net is twin
    x = torch.randn(1, 2, 10, 13, 16)  # not a multiple of 4: padded and cropped by the net
    out, ref = _grads(twin, x)
    got_out, got = _grads(selective, x)
    assert got_out.shape == (1, 2, 10, 13, 16)
    torch.testing.assert_close(got_out, out)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-7)
    # eval: no checkpoint, so the bytes held are the twin's
    selective.eval()
    assert activation_bytes(_loss, selective, x) == activation_bytes(_loss, twin, x)


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
