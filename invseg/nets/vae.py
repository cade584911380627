"""Variational auto-encoder branch that regularises a segmenter by reconstructing its input."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.layers.utils import get_act_layer
from torch import Tensor, nn

from invseg.nets._layers import DEFAULT_ACT, DEFAULT_NORM, conv, crop_to, make_norm, norm_act_conv


def vae_kwargs(model_cfg: Mapping[str, Any], crop: Sequence[int]) -> dict[str, Any]:
    """A net's arguments for training on ``crop``: with ``vae`` on, the crop fixes the VAE's size.

    The VAE branch's dense layers are built for one input size, so a net with ``vae`` true
    trains on one crop: ``input_image_size`` is set to ``crop`` (replacing any value given).
    Without ``vae`` the arguments are returned unchanged. The one home of this rule for
    training, crop planning and the benchmarks.

    Args:
        model_cfg: a net's keyword arguments (a config's ``model`` section, ``_target_`` and
            all).
        crop: the training crop ``(D, H, W)``.

    Returns:
        A new dict; ``model_cfg`` is not changed.

    Example:
        >>> vae_kwargs({"vae": True, "channels": [4, 8]}, (32, 32, 16))
        {'vae': True, 'channels': [4, 8], 'input_image_size': [32, 32, 16]}
        >>> vae_kwargs({"channels": [4, 8]}, (32, 32, 16))
        {'channels': [4, 8]}
    """
    kwargs = dict(model_cfg)
    if kwargs.get("vae"):
        kwargs["input_image_size"] = [int(s) for s in crop]
    return kwargs


class VAEBranch(nn.Module):
    r"""VAE branch from the bottleneck of a U-Net back to the input image (Myronenko, 2018).

    The bottleneck features are reduced (``norm -> act -> conv`` with stride 2 to
    ``reduced_channels``), flattened and mapped by one dense layer to the mean :math:`\mu` and
    log-variance :math:`\log\sigma^2` of a ``latent_dim``-dimensional Gaussian. In training
    :math:`z = \mu + \sigma \odot \epsilon,\ \epsilon \sim \mathcal N(0, I)` (the
    reparametrisation trick; in eval :math:`z = \mu`), then a dense layer and up-sampling conv
    stages (``conv1x1 -> x2 trilinear -> norm -> act -> conv3``, one per level, as in MONAI's
    ``SegResNetVAE``) decode :math:`z` to a reconstruction :math:`\hat x` of the image. The
    decoder is the branch's own (it does not share the segmentation decoder, so it works for
    invertible decoders too); its last stage is a 1x1 conv then up-sampling, so it stores
    almost nothing at full resolution.

    .. math::
        \mathcal L_{VAE} = w_{rec}\,\mathrm{MSE}(\hat x, x)
        + w_{KL}\,\tfrac12\,\mathrm{mean}\big(\mu^2 + \sigma^2 - \log\sigma^2 - 1\big)

    Args:
        spatial_dims: number of spatial dimensions (3).
        in_channels: channels of the bottleneck features.
        out_channels: channels of the reconstructed image (the network's ``in_channels``).
        bottleneck_size: spatial size of the bottleneck (fixed: the dense layers depend on it).
        up_channels: decoder channels from the bottleneck to full resolution, one per level
            (e.g. ``(128, 64, 32, 16)``); ``len(up_channels) - 1`` x2 up-samplings. Defaults to
            ``(in_channels,)`` (no up-sampling).
        latent_dim: dimension of :math:`z`.
        reduced_channels: channels after the strided reduction.
        act: activation name or ``(name, kwargs)``.
        norm: normalisation name or ``(name, kwargs)``.
        weights: ``(w_rec, w_kl)``.

    Shape:
        ``features``: ``(B, in_channels, *bottleneck_size)``; ``image``: ``(B, out_channels,
        *size)`` with ``size <= bottleneck_size * 2**(len(up_channels) - 1)`` (the
        reconstruction is cropped to it). Returns ``(recon, loss)``: recon like ``image``, loss a
        scalar.

    Raises:
        ValueError: if ``features`` does not have the bottleneck size given at construction.

    Example:
        >>> branch = VAEBranch(3, 8, 2, bottleneck_size=(2, 2, 2), up_channels=(8, 4))
        >>> recon, loss = branch(torch.randn(1, 8, 2, 2, 2), torch.randn(1, 2, 4, 4, 4))
        >>> recon.shape, bool(loss > 0)
        (torch.Size([1, 2, 4, 4, 4]), True)
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 128,
        out_channels: int = 4,
        *,
        bottleneck_size: Sequence[int],
        up_channels: Sequence[int] | None = None,
        latent_dim: int = 128,
        reduced_channels: int = 16,
        act: str | tuple = DEFAULT_ACT,
        norm: str | tuple = DEFAULT_NORM,
        weights: tuple[float, float] = (0.1, 0.1),
    ) -> None:
        super().__init__()
        self.bottleneck_size = tuple(int(s) for s in bottleneck_size)
        if len(self.bottleneck_size) != spatial_dims or min(self.bottleneck_size) < 1:
            raise ValueError(f"bottleneck_size must be {spatial_dims} positive ints.")
        up_channels = tuple(up_channels) if up_channels is not None else (in_channels,)
        if up_channels[0] != in_channels:
            raise ValueError(
                f"up_channels[0] must equal in_channels ({in_channels}), got {up_channels[0]}."
            )
        if len(weights) != 2 or min(weights) < 0:
            raise ValueError(
                f"weights must be two non-negative floats (w_rec, w_kl), got {weights}."
            )
        self.weights = (float(weights[0]), float(weights[1]))
        self.latent_dim = latent_dim
        self.reduced_size = tuple(math.ceil(s / 2) for s in self.bottleneck_size)
        flat = reduced_channels * math.prod(self.reduced_size)
        kw = {"spatial_dims": spatial_dims, "act": act, "norm": norm}

        self.reduce = nn.Sequential(
            make_norm(norm, spatial_dims, in_channels),
            get_act_layer(act),
            conv(spatial_dims, in_channels, reduced_channels, 3, stride=2),
        )
        self.encode = nn.Linear(flat, 2 * latent_dim)  # -> (mu, log-variance)
        self.decode = nn.Sequential(nn.Linear(latent_dim, flat), get_act_layer(act))
        self.expand = conv(spatial_dims, reduced_channels, in_channels, 1)
        stages: list[nn.Module] = []
        for c_in, c_out in itertools.pairwise(up_channels[:-1]):
            stages.append(
                nn.Sequential(
                    conv(spatial_dims, c_in, c_out, 1),
                    nn.Upsample(scale_factor=2, mode="trilinear", align_corners=False),
                    norm_act_conv(c_out, **kw),
                )
            )
        self.stages = nn.Sequential(*stages)
        last = [
            conv(
                spatial_dims,
                up_channels[-2] if len(up_channels) > 1 else in_channels,
                out_channels,
                1,
            )
        ]
        if len(up_channels) > 1:
            last.append(nn.Upsample(scale_factor=2, mode="trilinear", align_corners=False))
        self.final = nn.Sequential(*last)
        self._reduced_channels = reduced_channels

    def forward(self, features: Tensor, image: Tensor) -> tuple[Tensor, Tensor]:
        if tuple(features.shape[2:]) != self.bottleneck_size:
            raise ValueError(
                f"VAEBranch was built for bottleneck size {self.bottleneck_size}, got "
                f"{tuple(features.shape[2:])}: the input crop is fixed when the VAE is on."
            )
        b = features.shape[0]
        h = self.reduce(features).flatten(1)
        mu, logvar = self.encode(h).chunk(2, dim=1)
        logvar = logvar.clamp(-30.0, 20.0)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu) if self.training else mu
        h = self.decode(z).reshape(b, self._reduced_channels, *self.reduced_size)
        h = self.expand(h)
        if tuple(h.shape[2:]) != self.bottleneck_size:
            h = F.interpolate(h, size=self.bottleneck_size, mode="trilinear", align_corners=False)
        recon = crop_to(self.final(self.stages(h)), image.shape[2:])
        kl = 0.5 * torch.mean(mu.square() + logvar.exp() - logvar - 1.0)
        loss = self.weights[0] * F.mse_loss(recon, image) + self.weights[1] * kl
        return recon, loss
