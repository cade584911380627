from __future__ import annotations

import copy

import pytest
import torch

from invseg.nets import VAEBranch
from invseg.nets.vae import vae_kwargs

NETS = ("unet3d", "partially", "fully")


def test_branch_reconstructs_image_shape_and_positive_loss() -> None:
    branch = VAEBranch(3, 8, 2, bottleneck_size=(3, 2, 2), up_channels=(8, 4, 4))
    image = torch.randn(2, 2, 11, 8, 7)  # cropped from the padded 12 x 8 x 8
    recon, loss = branch(torch.randn(2, 8, 3, 2, 2), image)
    assert recon.shape == image.shape
    assert loss.ndim == 0 and torch.isfinite(loss) and loss > 0


def test_branch_rejects_another_bottleneck_size() -> None:
    branch = VAEBranch(3, 8, 2, bottleneck_size=(2, 2, 2))
    with pytest.raises(ValueError, match="fixed"):
        branch(torch.randn(1, 8, 4, 2, 2), torch.randn(1, 2, 2, 2, 2))


def test_branch_loss_is_the_weighted_sum_of_mse_and_kl() -> None:
    branch = VAEBranch(3, 4, 1, bottleneck_size=(2, 2, 2), weights=(0.0, 1.0)).eval()
    with torch.no_grad():
        branch.encode.weight.zero_()
        branch.encode.bias.zero_()  # mu = 0, log-variance = 0: KL = 0
    _, loss = branch(torch.randn(1, 4, 2, 2, 2), torch.randn(1, 1, 2, 2, 2))
    assert float(loss.detach()) == 0.0


@pytest.mark.parametrize("weights", [(0.0, 1.0), (1.0, 0.25)])
def test_branch_kl_matches_the_closed_form_at_non_zero_mean_and_variance(weights) -> None:
    """KL(N(mu, sigma^2) || N(0, 1)) per latent, averaged: catches a dropped or flipped KL."""
    from torch.distributions import Normal, kl_divergence

    branch = VAEBranch(3, 4, 1, bottleneck_size=(2, 2, 2), latent_dim=3, weights=weights).eval()
    mu = torch.tensor([0.5, -1.0, 2.0])
    logvar = torch.tensor([0.3, -0.7, 1.2])
    with torch.no_grad():
        branch.encode.weight.zero_()
        branch.encode.bias.copy_(torch.cat([mu, logvar]))  # eval: z = mu, no noise
    image = torch.randn(1, 1, 2, 2, 2)
    with torch.no_grad():
        recon, loss = branch(torch.randn(1, 4, 2, 2, 2), image)
    kl = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)).mean()
    assert float(kl) == pytest.approx(1.10276, abs=1e-5)  # 0.5 * mean(mu^2 + s^2 - log s^2 - 1)
    mse = torch.nn.functional.mse_loss(recon, image)
    expected = weights[0] * mse + weights[1] * kl
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize("name", list(NETS))
def test_vae_net_returns_logits_and_vae_loss_while_training(name: str, make_net) -> None:
    net = make_net(name, vae=True, input_image_size=(10, 12, 8)).train()
    out = net(torch.randn(2, 2, 10, 12, 8))
    assert isinstance(out, tuple) and len(out) == 2
    logits, loss = out
    assert logits.shape == (2, 3, 10, 12, 8)
    assert loss.ndim == 0 and torch.isfinite(loss) and loss > 0
    assert not hasattr(net, "vae_loss")  # the loss is returned, not left on the net


@pytest.mark.parametrize("name", list(NETS))
def test_vae_loss_gradients_reach_the_encoder_and_branch_only(name: str, make_net) -> None:
    net = make_net(name, vae=True, input_image_size=(10, 12, 8)).train()
    _, loss = net(torch.randn(2, 2, 10, 12, 8))
    loss.backward()
    for param in (net.stem.weight, *net.vae_branch.parameters()):
        assert param.grad is not None and param.grad.abs().sum() > 0
    assert net.head.weight.grad is None  # the head is after the bottleneck: not on the path


@pytest.mark.parametrize("memory", ["invert", "store"])
@pytest.mark.parametrize("name", ["partially", "fully"])
def test_vae_loss_gradient_is_the_same_in_every_memory_mode(name, memory, make_net) -> None:
    net = make_net(name, memory, vae=True, input_image_size=(8, 8, 8)).double().train()
    twin = copy.deepcopy(net)
    twin.memory = "checkpoint"
    x = torch.randn(1, 2, 8, 8, 8, dtype=torch.float64)
    grads = []
    for model in (net, twin):
        torch.manual_seed(3)  # the same VAE noise
        model(x)[1].backward()
        grads.append(model.stem.weight.grad)
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", list(NETS))
def test_vae_is_off_in_eval_at_any_size(name: str, make_net) -> None:
    net = make_net(name, vae=True, input_image_size=(8, 8, 8)).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 2, 9, 12, 5))
    assert isinstance(out, torch.Tensor) and out.shape == (1, 3, 9, 12, 5)


@pytest.mark.parametrize("name", list(NETS))
def test_net_without_vae_returns_logits_while_training(name: str, make_net) -> None:
    out = make_net(name).train()(torch.randn(1, 2, 8, 8, 8))
    assert isinstance(out, torch.Tensor) and out.shape == (1, 3, 8, 8, 8)


def test_vae_kwargs_fix_input_image_size_to_the_crop() -> None:
    cfg = {"_target_": "invseg.nets.UNet3D", "vae": True, "input_image_size": [64, 64, 64]}
    assert vae_kwargs(cfg, (32, 16, 8)) == cfg | {"input_image_size": [32, 16, 8]}
    assert cfg["input_image_size"] == [64, 64, 64]  # not changed in place
    plain = {"_target_": "invseg.nets.UNet3D", "vae": False}
    assert vae_kwargs(plain, (32, 16, 8)) == plain


@pytest.mark.parametrize("name", list(NETS))
def test_vae_training_crop_is_fixed(name: str, make_net) -> None:
    net = make_net(name, vae=True, input_image_size=(8, 8, 8)).train()
    with pytest.raises(ValueError, match=r"fixed.*\(8, 8, 8\)"):
        net(torch.randn(1, 2, 16, 8, 8))


@pytest.mark.parametrize("name", list(NETS))
def test_vae_needs_input_image_size(name: str, make_net) -> None:
    with pytest.raises(ValueError, match="input_image_size"):
        make_net(name, vae=True)
