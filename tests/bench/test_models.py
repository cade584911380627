"""The model zoo: every entry builds from MONAI or invseg and trains through one interface."""

from __future__ import annotations

import pytest
import torch

from invseg.bench.models import ZOO, build, dynunet_layout, model_section
from invseg.engine.memory import activation_bytes
from invseg.nets.registry import check_plain, full_name, model_class

#: Parameters of every zoo entry at base 4 (4 -> 3 channels, crop 16^3); a change to an entry's
#: section, or to the net it names, shows here.
PARAMS = {
    "unet3d": 116167, "unet3d_ckpt": 116167, "partially": 47215, "partially_vae": 77491,
    "fully": 26299, "fully_vae": 56575, "partially_deep": 116695, "fully_deep": 95779,
    "fully_lift": 25864, "segresnet": 1176843, "segresnetvae": 1218687, "dynunet": 21759,
    "monai_unet": 75930, "monai_checkpoint_unet": 75930,
}  # fmt: skip


def test_every_zoo_entry_has_a_parameter_count() -> None:
    assert set(PARAMS) == set(ZOO)


@pytest.mark.parametrize(("name", "params"), PARAMS.items())
def test_zoo_entry_is_a_registered_net_with_plain_arguments(name: str, params: int) -> None:
    section = model_section(name, in_channels=4, out_channels=3, crop=(16,) * 3, base=4)
    kwargs = {k: v for k, v in section.items() if k != "_target_"}
    check_plain(kwargs, "model")  # what a config (and a checkpoint) may hold
    net = build(name, in_channels=4, out_channels=3, crop=(16,) * 3, base=4).net
    assert type(net) is model_class(section["_target_"]) and full_name(type(net)) is not None
    assert sum(p.numel() for p in net.parameters()) == params


@pytest.mark.parametrize("name", list(ZOO))
def test_every_zoo_model_returns_logits_and_vae_loss_in_training_only(name: str) -> None:
    torch.manual_seed(0)
    net = build(name, in_channels=4, out_channels=3, crop=(16, 16, 16), base=8)
    x = torch.randn(1, 4, 16, 16, 16)
    logits, vae = net.train()(x)
    assert logits.shape == (1, 3, 16, 16, 16)
    assert (vae is not None) == name.endswith(("_vae", "vae"))
    if vae is not None:
        assert vae.ndim == 0 and vae.item() > 0
    (logits.mean() + (0 if vae is None else vae)).backward()
    params = [p for p in net.parameters() if p.requires_grad]
    assert sum(p.grad is not None for p in params) >= 0.9 * len(params)  # SegResNetVAE: std head
    assert net.eval()(x)[1] is None


def test_checkpointed_unet3d_matches_store_gradients_and_saves_less() -> None:
    from invseg.nets import UNet3D

    x = torch.randn(1, 4, 16, 16, 16)
    nets = []
    for name in ("unet3d", "unet3d_ckpt"):
        torch.manual_seed(0)
        nets.append(build(name, in_channels=4, out_channels=3, crop=(16,) * 3, base=8))
    # the net itself in checkpoint mode: no wrapper, the twin's parameter names
    assert type(nets[1].net) is UNet3D and nets[1].net.memory == nets[1].memory == "checkpoint"
    assert list(nets[1].state_dict()) == list(nets[0].state_dict())
    for net in nets:
        net(x)[0].square().mean().backward()
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        torch.testing.assert_close(a.grad, b.grad)
    store, ckpt = (activation_bytes(lambda n=n: n(x)) for n in nets)
    assert ckpt < store / 2


@pytest.mark.parametrize(("memory", "mode"), [("checkpoint", "checkpoint"), ("invert", "store")])
def test_unet3d_memory_can_be_overridden(memory: str, mode: str) -> None:
    net = build("unet3d", in_channels=4, out_channels=3, crop=(16,) * 3, base=8, memory=memory)
    assert net.memory == net.net.memory == mode  # UNet3D has nothing to invert: it stores
    with pytest.raises(ValueError, match="Did you mean 'store'"):
        build("unet3d", in_channels=4, out_channels=3, crop=(16,) * 3, memory="stroe")


def test_invertible_nets_save_less_than_their_store_twin() -> None:
    x = torch.randn(1, 4, 16, 16, 16)
    inv = build("partially", in_channels=4, out_channels=3, crop=(16,) * 3, base=8)
    store = build("partially", in_channels=4, out_channels=3, crop=(16,) * 3, base=8,
                  memory="store")  # fmt: skip
    assert inv.memory == "invert" and store.memory == "store"
    assert activation_bytes(lambda: inv(x)) < activation_bytes(lambda: store(x)) / 2


def test_dynunet_is_scaled_to_the_crop_like_nnunet() -> None:
    assert dynunet_layout((32, 32, 32), 16)["strides"] == [1, 2, 2, 2]
    assert dynunet_layout((128, 128, 128), 32)["filters"] == [32, 64, 128, 256, 320, 320]
    net = build("dynunet", in_channels=4, out_channels=3, crop=(64,) * 3, base=8)
    assert net.multiple == 16


def test_bad_names_and_options_are_rejected() -> None:
    with pytest.raises(ValueError, match="Did you mean 'segresnet'"):
        build("segresnett", in_channels=4, out_channels=3, crop=(16,) * 3)
    with pytest.raises(ValueError, match="no memory modes"):
        build("monai_unet", in_channels=4, out_channels=3, crop=(16,) * 3, memory="invert")
    with pytest.raises(ValueError, match="crop"):
        build("unet3d", in_channels=4, out_channels=3, crop=(4, 4))
    with pytest.raises(ValueError, match="Did you mean 'unet3d'"):
        model_section("unet3", in_channels=4, out_channels=3, crop=(16,) * 3, base=4)


def test_deep_rows_have_the_twins_parameters_at_one_blocks_memory() -> None:
    from invseg.bench.models import DEFAULT_MODELS

    assert set(ZOO) - set(DEFAULT_MODELS) == {"partially_deep", "fully_deep", "fully_lift"}
    x = torch.randn(1, 4, 16, 16, 16)
    nets = {n: build(n, in_channels=4, out_channels=3, crop=(16,) * 3, base=8)
            for n in ("unet3d", "partially", "partially_deep")}  # fmt: skip
    params = {n: sum(p.numel() for p in net.parameters()) for n, net in nets.items()}
    assert abs(params["partially_deep"] - params["unet3d"]) < 0.01 * params["unet3d"]
    assert params["partially_deep"] > 2 * params["partially"]
    act = {n: activation_bytes(lambda n=n: nets[n](x)[0].square().mean()) for n in nets}
    assert act["partially_deep"] == act["partially"]  # flat in depth
    assert act["partially_deep"] < act["unet3d"] / 4
