r"""Plug invseg blocks into a MONAI network: a SegResNet-style encoder with invertible stages.

MONAI's SegResNet encoder is a stem convolution followed, at every level, by a strided
convolution and a few residual blocks (``monai.networks.blocks.segresnet_block.ResBlock``). Here
the residual blocks of each level are replaced by a chain of
:class:`invseg.nets.InvertibleResBlock` in an :class:`invseg.engine.InvertibleSequential`.
Everything else stays MONAI: the layers (``get_conv_layer``, ``UpSample``) and the loss
(``DiceLoss``); the data is a noisy synthetic sphere.

With ``memory="invert"`` the invertible stages keep only their output for backward, so the
activation memory of the encoder no longer grows with the number of blocks; the script measures
it with :func:`invseg.engine.activation_bytes` for three encoders with the same layout:

* ``monai``: MONAI's own ``ResBlock`` (non-invertible reference);
* ``store``: invertible blocks trained with plain autograd (identical weights to ``invert``);
* ``invert``: invertible blocks trained without storing their activations;
* ``anchored``: ``invert`` with ``anchor_every=1``: every block's input is kept (the bytes of
  checkpointing), and each coupling is back-propagated from its kept input and known output
  without evaluating a convolution, at about the step time of ``store``.

Run it::

    python examples/monai_encoder.py            # 32^3 volume, 4 blocks per level
    INVSEG_QUICK=1 python examples/monai_encoder.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch
from monai.losses import DiceLoss
from monai.networks.blocks import UpSample
from monai.networks.blocks.segresnet_block import ResBlock, get_conv_layer
from torch import Tensor, nn

from invseg.engine import InvertibleSequential, activation_bytes
from invseg.nets import InvertibleResBlock

NORM = ("group", {"num_groups": 2})
ACT = ("leakyrelu", {"negative_slope": 0.01})


def stage(channels: int, blocks: int, kind: str) -> nn.Module:
    """The residual blocks of one level: MONAI ``ResBlock`` s or an invertible chain."""
    if kind == "monai":
        return nn.Sequential(*[ResBlock(3, channels, norm=NORM, act=ACT) for _ in range(blocks)])
    anchored = kind == "anchored"
    return InvertibleSequential(
        *[InvertibleResBlock(channels, norm=NORM, act=ACT) for _ in range(blocks)],
        memory="invert" if anchored else kind,  # "invert" or "store"
        anchor_every=1 if anchored else None,
    )


class EncoderSegNet(nn.Module):
    """SegResNet-like encoder (two levels) with a light decoder, built from MONAI layers.

    Args:
        in_channels: image channels.
        out_channels: segmentation channels.
        channels: feature channels of the first level (doubled at the second).
        blocks: residual blocks per level.
        kind: ``"monai"``, ``"store"``, ``"invert"`` or ``"anchored"`` (module docstring).
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        *,
        channels: int = 8,
        blocks: int = 4,
        kind: str = "invert",
    ) -> None:
        super().__init__()
        c0, c1 = channels, 2 * channels
        self.stem = get_conv_layer(3, in_channels, c0)
        self.level0 = stage(c0, blocks, kind)
        self.down = get_conv_layer(3, c0, c1, stride=2)
        self.level1 = stage(c1, blocks, kind)
        self.up = UpSample(3, c1, c0, scale_factor=2, mode="deconv")
        self.head = get_conv_layer(3, c0, out_channels, kernel_size=1, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        skip = self.level0(self.stem(x))
        deep = self.level1(self.down(skip))
        return self.head(self.up(deep) + skip)


def sphere(size: int, *, seed: int = 0) -> tuple[Tensor, Tensor]:
    """A noisy bright ball (image) and its mask (label), both ``(1, 1, size, size, size)``."""
    g = torch.Generator().manual_seed(seed)
    r = torch.linspace(-1, 1, size)
    zz, yy, xx = torch.meshgrid(r, r, r, indexing="ij")
    label = ((xx - 0.1) ** 2 + yy**2 + (zz + 0.1) ** 2 < 0.35).float()
    image = label + 0.3 * torch.randn(label.shape, generator=g)
    return image[None, None], label[None, None]


def main(tmp_dir: str | Path | None = None, quick: bool = False) -> dict[str, Any]:
    """Measure activation memory of the four encoders and train the invertible one.

    Args:
        tmp_dir: unused (no files are written); kept for the examples' common signature.
        quick: 16^3 volume, 2 blocks per level, 8 steps (seconds on a CPU).

    Returns:
        ``{"bytes": {kind: activation bytes}, "losses": [...], "grad_max_diff": float,
        "grad_max_diff_anchored": float}``.
    """
    torch.manual_seed(0)
    size, blocks, steps = (16, 2, 8) if quick else (32, 4, 30)
    image, label = sphere(size)

    # 1) activation memory of one training forward, same layout, four mechanisms
    kinds = ("monai", "store", "invert", "anchored")
    nets = {kind: EncoderSegNet(blocks=blocks, kind=kind) for kind in kinds}
    for twin in ("store", "anchored"):  # identical weights
        nets[twin].load_state_dict(nets["invert"].state_dict())
    loss_fn = DiceLoss(sigmoid=True)
    nbytes = {
        kind: activation_bytes(lambda n=net: loss_fn(n(image), label)) for kind, net in nets.items()
    }
    for kind, n in nbytes.items():
        print(f"{kind:>8}: {n / 2**20:6.2f} MiB held for backward")
    print(f"invert saves {nbytes['store'] / nbytes['invert']:.1f}x over plain autograd")

    # 2) same gradients with and without stored activations
    grads = {}
    for kind in ("store", "invert", "anchored"):
        net = nets[kind]
        net.zero_grad()
        loss_fn(net(image), label).backward()
        grads[kind] = [p.grad.clone() for p in net.parameters()]
    diff = max((a - b).abs().max().item() for a, b in zip(grads["store"], grads["invert"]))
    print(f"max |grad(store) - grad(invert)| = {diff:.2e}")
    diff_anchored = max(
        (a - b).abs().max().item() for a, b in zip(grads["store"], grads["anchored"])
    )
    print(f"max |grad(store) - grad(anchored)| = {diff_anchored:.2e}")

    # 3) train the invertible encoder a few steps with MONAI's Dice loss
    net = nets["invert"]
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(net(image), label)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    print(f"Dice loss {losses[0]:.3f} -> {losses[-1]:.3f} in {steps} steps")
    return {
        "bytes": nbytes,
        "losses": losses,
        "grad_max_diff": diff,
        "grad_max_diff_anchored": diff_anchored,
    }


if __name__ == "__main__":
    main(quick=os.environ.get("INVSEG_QUICK", "") not in ("", "0") or "--quick" in sys.argv)
