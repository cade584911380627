"""UNet3D's memory modes: checkpoint per level has store's gradients and holds fewer bytes."""

from __future__ import annotations

import copy

import pytest
import torch

import invseg.nets.unet3d as unet3d_module
from invseg.engine import activation_bytes
from invseg.engine.testing import gradients
from invseg.nets import UNet3D

F64 = torch.float64


def _pair(**kwargs) -> tuple[UNet3D, UNet3D]:
    """A float64 UNet3D in ``"store"`` mode and a copy of it in ``"checkpoint"`` mode."""
    kwargs.setdefault("channels", (4, 8, 16))
    kwargs.setdefault("norm", ("group", {"num_groups": 2}))
    store = UNet3D(3, 2, 3, memory="store", **kwargs).double().train()
    ckpt = copy.deepcopy(store)
    ckpt.memory = "checkpoint"
    return store, ckpt


def _grads(net: UNet3D, x: torch.Tensor) -> dict[str, torch.Tensor]:
    def loss(out: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        logits, vae = out if isinstance(out, tuple) else (out, 0.0)
        return (logits.sin() * logits).sum() + vae

    torch.manual_seed(1)  # the same dropout masks and VAE noise in both modes
    return gradients(net, [x], loss)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"blocks": (2, 1, 3)}, {"dropout": 0.3, "vae": True, "input_image_size": (8, 8, 8)}],
    ids=["plain", "blocks", "dropout_vae"],
)
def test_checkpoint_gradients_equal_store_in_float64(kwargs) -> None:
    store, ckpt = _pair(**kwargs)
    x = torch.randn(2, 2, 8, 8, 8, dtype=F64, requires_grad=True)
    ref, got = _grads(store, x), _grads(ckpt, x)
    assert got.keys() == ref.keys()
    assert len(ref) == len(list(store.parameters())) + 1  # every parameter and the input
    for name, g in ref.items():
        assert torch.allclose(got[name], g, rtol=1e-12, atol=1e-14), name


def test_checkpoint_runs_each_level_under_torch_checkpoint(monkeypatch) -> None:
    calls = []

    def counting(fn, *args, **kwargs):
        calls.append(kwargs)
        return torch.utils.checkpoint.checkpoint(fn, *args, **kwargs)

    monkeypatch.setattr(unet3d_module, "checkpoint", counting)
    _, ckpt = _pair()
    ckpt(torch.randn(1, 2, 8, 8, 8, dtype=F64)).sum().backward()
    assert calls == [{"use_reentrant": False}] * 5  # 2 encoder stages, bottom, 2 decoder steps
    calls.clear()
    with torch.no_grad():
        ckpt(torch.randn(1, 2, 8, 8, 8, dtype=F64))
    ckpt.eval()(torch.randn(1, 2, 8, 8, 8, dtype=F64))
    assert calls == []


def test_checkpoint_holds_fewer_activation_bytes_flat_in_blocks() -> None:
    x = torch.randn(1, 2, 16, 16, 16, dtype=F64)
    held = {}
    for blocks in (1, 3):
        for net in _pair(blocks=blocks):
            held[net.memory, blocks] = activation_bytes(lambda n=net: n(x).square().sum())
    assert held["checkpoint", 1] < 0.5 * held["store", 1]
    assert held["store", 3] > 2 * held["store", 1]
    # only level inputs are kept, however many residual blocks a level has
    assert held["checkpoint", 3] == held["checkpoint", 1]


def test_eval_and_no_grad_forward_are_identical_to_store() -> None:
    store, ckpt = _pair(dropout=0.3)
    x = torch.randn(1, 2, 7, 9, 8, dtype=F64)
    with torch.no_grad():
        torch.manual_seed(2)
        train_ref = store(x)
        torch.manual_seed(2)
        assert torch.equal(ckpt(x), train_ref)
    store.eval(), ckpt.eval()
    assert torch.equal(ckpt(x), store(x))
    # eval with grad enabled: plain autograd, the same bytes as store
    assert activation_bytes(lambda: ckpt(x).sum()) == activation_bytes(lambda: store(x).sum())


def test_memory_is_a_checked_settable_property() -> None:
    net = UNet3D(3, 2, 3, channels=(8, 16))
    assert net.memory == "store" and "memory='store'" in repr(net)
    net.memory = "Checkpoint"
    assert net.memory == "checkpoint"
    net.memory = "invert"  # accepted so one config serves every net; nothing is invertible
    assert net.memory == "store"
    with pytest.raises(ValueError, match="Did you mean 'checkpoint'"):
        net.memory = "checkpoin"
    with pytest.raises(ValueError, match="Did you mean 'store'"):
        UNet3D(3, 2, 3, channels=(8, 16), memory="stor")
    with pytest.raises(TypeError, match="memory must be a string"):
        net.memory = 1  # type: ignore[assignment]
    assert net.memory == "store"  # a refused value changes nothing


def test_modes_share_one_state_dict() -> None:
    store, ckpt = _pair()
    assert list(ckpt.state_dict()) == list(store.state_dict())
    fresh = UNet3D(3, 2, 3, channels=(4, 8, 16), norm=("group", {"num_groups": 2}))
    fresh.load_state_dict(ckpt.state_dict())  # strict: no wrapper keys
