"""Against nnU-Net v2's own code, where it is installed (``pip install 'invseg[nnunet]'``)."""

from __future__ import annotations

import copy
import types

import pytest
import torch

from invseg.nnunet import FullyInvResNNUNet, PartiallyInvResNNUNet
from invseg.nnunet.networks import residual_ends
from tests.nnunet.conftest import ARCHITECTURE, IN_CHANNELS, REGIONS

pytest.importorskip("nnunetv2")

from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

CLASSES = {"partially": PartiallyInvResNNUNet, "fully": FullyInvResNNUNet}


def _arch(name: str, **invseg_keys) -> dict:
    arch = copy.deepcopy(ARCHITECTURE)
    arch["network_class_name"] = f"invseg.nnunet.{CLASSES[name].__name__}"
    arch["arch_kwargs"] |= invseg_keys
    return arch


def _network(deep_supervision: bool, name: str = "partially", **invseg_keys) -> torch.nn.Module:
    arch = _arch(name, **invseg_keys)
    return get_network_from_plans(
        arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
        IN_CHANNELS, REGIONS, allow_init=True, deep_supervision=deep_supervision,
    )  # fmt: skip


def test_get_network_from_plans_builds_and_initialises_the_invseg_net() -> None:
    net = _network(True, memory="checkpoint", blocks=[1, 2, 1])
    assert type(net) is PartiallyInvResNNUNet
    assert net.memory == "checkpoint" and net.net.blocks == (1, 2, 1)
    ends = [m for m in net.modules() if id(m) in residual_ends(net)]
    couplings = 2 * (1 + 2) + 1  # encoder and decoder of levels 0, 1, and the bottom
    assert len(ends) == 2 * couplings and all(not m.weight.any() for m in ends)  # initialized
    out = net(torch.randn(1, IN_CHANNELS, 16, 16, 16))
    assert [tuple(o.shape[2:]) for o in out] == [(16, 16, 16), (8, 8, 8)]


@pytest.mark.parametrize("name", list(CLASSES))
def test_nnunet_loss_and_deep_supervision_switch_work_on_the_compiled_net(name: str) -> None:
    from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    net = _network(True, name)
    # nnUNetTrainer._build_loss for regions, with its weights for n_stages - 1 outputs
    dice = {"batch_dice": True, "do_bg": True, "smooth": 1e-5, "ddp": False}
    loss = DC_and_BCE_loss({}, dice, use_ignore_label=False, dice_class=MemoryEfficientSoftDiceLoss)
    loss = DeepSupervisionWrapper(loss, [1.0, 0.0])  # [1, 1/2], the last set to 0, normalised
    x = torch.randn(2, IN_CHANNELS, 16, 16, 16)
    target = [(torch.rand(2, REGIONS, s, s, s) > 0.5).float() for s in (16, 8)]
    value = loss(net(x), target)
    value.backward()
    assert torch.isfinite(value) and net.net.stem.weight.grad.abs().sum() > 0
    trainer = types.SimpleNamespace(is_ddp=False, network=torch.compile(net, backend="aot_eager"))
    nnUNetTrainer.set_deep_supervision_enabled(trainer, False)
    assert net.decoder.deep_supervision is False
    with torch.no_grad():
        assert isinstance(net(x), torch.Tensor)


def test_nnunet_reads_the_written_plans_and_builds_the_net(tmp_path, monkeypatch) -> None:
    import math

    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from invseg.commands.nnunet import plans
    from invseg.nnunet import plans as nnplans
    from tests.nnunet.plans_files import architecture, brats_plans, write_dataset

    source = brats_plans(fullres=architecture(3, [8, 16, 32]), patch=[32, 32, 32],
                         median=[48.0, 64.0, 40.0])  # fmt: skip
    folder = write_dataset(tmp_path, source)
    peak = lambda patch, batch: batch * math.prod(patch)  # noqa: E731
    monkeypatch.setattr(nnplans, "measure_peak", lambda *a, **k: peak)
    plans(137, model="partially", budget=str(2 * 48 * 64 * 32), preprocessed=tmp_path)
    manager = PlansManager(str(folder / "nnUNetPlansInvseg.json"))
    config = manager.get_configuration("3d_fullres")
    assert manager.plans_name == "nnUNetPlansInvseg"
    assert config.network_arch_class_name == "invseg.nnunet.PartiallyInvResNNUNet"
    assert config.patch_size == [44, 60, 36] and config.data_identifier == "nnUNetPlans_3d_fullres"
    cascade = manager.get_configuration("3d_cascade_fullres")  # inherits the invseg net
    assert cascade.network_arch_class_name == config.network_arch_class_name
    net = nnUNetTrainer.build_network_architecture(manager, config, IN_CHANNELS, REGIONS, True)
    assert type(net) is PartiallyInvResNNUNet and net.memory == "invert"
    out = net(torch.randn(1, IN_CHANNELS, *config.patch_size))
    assert [tuple(o.shape[2:]) for o in out] == [(44, 60, 36), (22, 30, 18)]
