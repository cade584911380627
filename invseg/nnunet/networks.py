r"""invseg's InvRes U-Nets with nnU-Net v2's network signature, for ``nnUNetTrainer``.

nnU-Net v2 builds the network named by a plans file's ``architecture.network_class_name`` as
``cls(input_channels=..., num_classes=..., **arch_kwargs, deep_supervision=...)``, calls
``network.apply(network.initialize)``, compiles it with ``torch.compile`` on CUDA and switches
deep supervision with ``network.decoder.deep_supervision = bool``. The classes here do all
of that around :class:`~invseg.nets.PartiallyInvResUNet` and
:class:`~invseg.nets.FullyInvResUNet` (the ``net`` attribute), without nnunetv2 installed:

* the arguments are read by :func:`invseg.nnunet.arch.net_options` (what is refused, and the
  block rule), plus invseg's own ``memory``, ``blocks``, ``anchor_every`` (Partially) and
  ``lift`` (Fully);
* **deep supervision** (Partially): while ``decoder.deep_supervision`` is true, in training and
  evaluation alike as nnU-Net's ``UNetDecoder``, ``forward`` returns ``n_stages - 1`` logit
  maps, one per decoder stage, full resolution first (the map of level :math:`k` is
  :math:`2^k` times smaller), the lower ones each from its own 1x1 head on that level's
  decoder output; nnU-Net's loss weights (:math:`2^{-k}`, the last one 0, normalised) line up
  with them. The heads always exist, so weights load whichever way they were trained.
  Fully has none yet (its decoder is inside the invertible body): ``deep_supervision=True``
  raises, naming ``nnUNetTrainerNoDeepSupervision``; setting the flag later does not (the
  trainer sets it back to true after its final validation, whatever the trainer), a forward
  with it set does;
* :meth:`~NNUNetInvRes.initialize`: nnU-Net's He initialisation of every convolution, except
  the last convolution of each residual function of each invertible block, set to zero, as
  nnU-Net's residual encoders zero their last norm before the addition: every coupling starts
  as the identity, so no depth of invertible stages amplifies activations at the start and
  each inverse starts exact;
* ``torch.compile`` works: each invertible stage in ``"invert"`` mode is a graph break (the
  engine's backward drives autograd itself and runs eagerly); the rest is compiled.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, ClassVar

from torch import Tensor, nn

from invseg._choices import did_you_mean
from invseg.engine import AdditiveCoupling
from invseg.nets import FullyInvResUNet, PartiallyInvResUNet
from invseg.nnunet.arch import net_options

__all__ = [
    "DeepSupervisionHeads",
    "FullyInvResNNUNet",
    "NNUNetInvRes",
    "NoDeepSupervision",
    "PartiallyInvResNNUNet",
    "residual_ends",
]

_CONVS = (nn.Conv3d, nn.ConvTranspose3d)
#: nnU-Net's ``InitWeights_He(1e-2)``: the LeakyReLU slope its He initialisation assumes
HE_SLOPE = 1e-2
FULLY_DS_HELP = (
    "FullyInvResNNUNet has no deep supervision yet: its decoder lives inside the invertible "
    "body, whose intermediate levels it does not expose. Train it with "
    "'nnUNetv2_train ... -tr nnUNetTrainerNoDeepSupervision', or use PartiallyInvResNNUNet."
)


def residual_ends(module: nn.Module) -> set[int]:
    """``id`` of the last convolution of each residual function of each additive coupling."""
    ends = set()
    for block in module.modules():
        if isinstance(block, AdditiveCoupling):
            for fn in (block.f, block.g):
                convs = [m for m in fn.modules() if isinstance(m, _CONVS)]
                if convs:
                    ends.add(id(convs[-1]))
    return ends


class DeepSupervisionHeads(nn.Module):
    """nnU-Net's ``network.decoder`` of :class:`PartiallyInvResNNUNet`: the flag and the heads.

    ``heads[k - 1]`` is the 1x1 convolution from the decoder output of level ``k`` (``1 <= k <=
    n_stages - 2``, ``channels[k]`` channels) to ``num_classes`` logits; level 0 uses the net's
    own head.

    Args:
        channels: channels per level.
        num_classes: output channels.
        deep_supervision: initial value of :attr:`deep_supervision`.
    """

    def __init__(self, channels: Sequence[int], num_classes: int, deep_supervision: bool) -> None:
        super().__init__()
        self.heads = nn.ModuleList([nn.Conv3d(c, num_classes, 1) for c in channels[1:-1]])
        self.deep_supervision = bool(deep_supervision)


class NoDeepSupervision(nn.Module):
    """nnU-Net's ``network.decoder`` of :class:`FullyInvResNNUNet`: deep supervision is off.

    :attr:`deep_supervision` may be set (nnU-Net's trainer sets it to ``True`` again after its
    final validation, whatever the trainer), but a forward while it is true raises.
    """

    def __init__(self) -> None:
        super().__init__()
        self.deep_supervision = False


class NNUNetInvRes(nn.Module):
    """What both wrappers share: nnU-Net's arguments, ``decoder``, ``initialize``, ``memory``.

    Subclasses set :attr:`net_class` and :attr:`own_keys`, the keyword arguments of their net
    beyond the shared ones (``memory``, ``blocks``), passed on as ``**own``.
    """

    net_class: ClassVar[type[nn.Module]]
    own_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        input_channels: int,
        num_classes: int,
        *,
        n_stages: int,
        features_per_stage: int | Sequence[int],
        conv_op: Any,
        kernel_sizes: Any,
        strides: Any,
        n_conv_per_stage: Any = None,
        n_conv_per_stage_decoder: Any = None,
        conv_bias: bool = True,
        norm_op: Any = nn.InstanceNorm3d,
        norm_op_kwargs: dict | None = None,
        dropout_op: Any = None,
        dropout_op_kwargs: dict | None = None,
        nonlin: Any = nn.LeakyReLU,
        nonlin_kwargs: dict | None = None,
        deep_supervision: bool = False,
        n_blocks_per_stage: Any = None,
        memory: str = "invert",
        blocks: int | Sequence[int] | None = None,
        **own: Any,
    ) -> None:
        super().__init__()
        unknown = sorted(set(own) - set(self.own_keys))
        if unknown:
            known = [*inspect.signature(NNUNetInvRes).parameters, *self.own_keys]
            raise TypeError(
                f"{type(self).__name__}: unknown argument architecture.arch_kwargs."
                f"{unknown[0]}.{did_you_mean(unknown[0], known)}"
            )
        options = net_options(
            n_stages=n_stages, features_per_stage=features_per_stage, conv_op=conv_op,
            kernel_sizes=kernel_sizes, strides=strides, n_conv_per_stage=n_conv_per_stage,
            n_conv_per_stage_decoder=n_conv_per_stage_decoder,
            n_blocks_per_stage=n_blocks_per_stage, conv_bias=conv_bias, norm_op=norm_op,
            norm_op_kwargs=norm_op_kwargs, dropout_op=dropout_op,
            dropout_op_kwargs=dropout_op_kwargs, nonlin=nonlin, nonlin_kwargs=nonlin_kwargs,
            blocks=blocks,
        )  # fmt: skip
        self.net = self.net_class(3, input_channels, num_classes, memory=memory, **options, **own)
        self.num_classes = num_classes
        self.decoder = self.make_decoder(options["channels"], num_classes, deep_supervision)

    def make_decoder(self, channels: Sequence[int], num_classes: int, on: bool) -> nn.Module:
        """The module nnU-Net switches deep supervision on (``decoder.deep_supervision``)."""
        raise NotImplementedError

    @property
    def memory(self) -> str:
        """The net's memory mode (``"invert"``, ``"checkpoint"``, ``"store"``); settable."""
        return self.net.memory

    @memory.setter
    def memory(self, value: str) -> None:
        self.net.memory = value

    def initialize(self, module: nn.Module) -> None:
        """nnU-Net's ``network.apply(network.initialize)`` hook, for one module.

        Every 3D convolution and transposed convolution gets nnU-Net's He-normal weights
        (``a=1e-2``) and zero bias, except the last convolution of each residual function of
        each invertible block, which is zeroed: each coupling then starts as the identity. The
        rule depends on the module only, not on the order ``apply`` visits modules in.
        """
        if not isinstance(module, _CONVS):
            return
        if id(module) in residual_ends(self):
            nn.init.zeros_(module.weight)
        else:
            nn.init.kaiming_normal_(module.weight, a=HE_SLOPE)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class PartiallyInvResNNUNet(NNUNetInvRes):
    r""":class:`~invseg.nets.PartiallyInvResUNet` as an nnU-Net v2 architecture.

    Put ``invseg.nnunet.PartiallyInvResNNUNet`` in a plans configuration's
    ``architecture.network_class_name`` (``invseg nnunet plans`` writes such plans).

    Args:
        input_channels: input channels.
        num_classes: output channels (nnU-Net's segmentation heads: regions or labels).
        n_stages, features_per_stage, conv_op, kernel_sizes, strides, n_conv_per_stage,
            n_conv_per_stage_decoder, conv_bias, norm_op, norm_op_kwargs, dropout_op,
            dropout_op_kwargs, nonlin, nonlin_kwargs: nnU-Net's ``arch_kwargs``
            (:mod:`invseg.nnunet.arch` says how each is read).
        deep_supervision: return one logit map per decoder stage (also ``decoder``'s flag).
        n_blocks_per_stage: residual-encoder plans' blocks per stage, instead of
            ``n_conv_per_stage``.
        memory: ``"invert"`` (default), ``"checkpoint"`` or ``"store"``.
        blocks: invertible blocks per level (an int or one per level), instead of the rule.
        anchor_every: see :class:`~invseg.nets.PartiallyInvResUNet`.

    Shape:
        ``(B, input_channels, D, H, W) -> (B, num_classes, D, H, W)``; under deep supervision a
        list whose entry :math:`k` is ``(B, num_classes, ceil(D / 2**k), ...)``,
        ``k = 0 .. n_stages - 2``.

    Raises:
        ValueError: an argument the net cannot honour (naming its ``arch_kwargs`` entry).

    Example:
        >>> import torch
        >>> net = PartiallyInvResNNUNet(
        ...     4, 3, n_stages=3, features_per_stage=[8, 16, 32], conv_op=nn.Conv3d,
        ...     kernel_sizes=[[3, 3, 3]] * 3, strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2]],
        ...     n_conv_per_stage=[2, 2, 2], n_conv_per_stage_decoder=[2, 2],
        ...     deep_supervision=True,
        ... )
        >>> _ = net.apply(net.initialize)  # as nnU-Net does
        >>> [tuple(o.shape) for o in net(torch.randn(1, 4, 16, 16, 16))]
        [(1, 3, 16, 16, 16), (1, 3, 8, 8, 8)]
    """

    net_class = PartiallyInvResUNet
    own_keys = ("anchor_every",)

    def __init__(
        self,
        input_channels: int,
        num_classes: int,
        *,
        anchor_every: int | None = None,
        **arch_kwargs: Any,
    ) -> None:
        super().__init__(input_channels, num_classes, anchor_every=anchor_every, **arch_kwargs)

    def make_decoder(self, channels: Sequence[int], num_classes: int, on: bool) -> nn.Module:
        return DeepSupervisionHeads(channels, num_classes, on)

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        if not self.decoder.deep_supervision:
            return self.net(x)
        outputs: list[Tensor] = []

        def run_level(fn: Any, *args: Tensor) -> Tensor:
            out = self.net.run_level(fn, *args)
            outputs.append(out)
            return out

        logits = self.net.forward_levels(x, run_level)
        # forward_levels runs the L-1 encoder stages, the bottom stage, then the L-1 decoder
        # steps from level L-2 up to level 0: the decoder output of level k is outputs[-1 - k]
        if len(outputs) != 2 * self.net.levels - 1:
            raise RuntimeError(
                f"{type(self.net).__name__}.forward_levels ran {len(outputs)} levels, not "
                f"2 * {self.net.levels} - 1: its layout changed; update {type(self).__name__}."
            )
        deeper = []
        for k, head in enumerate(self.decoder.heads, start=1):  # crop as the net crops level 0
            size = [-(-s // 2**k) for s in x.shape[2:]]
            deeper.append(head(outputs[-1 - k])[(..., *(slice(0, s) for s in size))])
        return [logits, *deeper]


class FullyInvResNNUNet(NNUNetInvRes):
    r""":class:`~invseg.nets.FullyInvResUNet` as an nnU-Net v2 architecture (no deep supervision).

    As :class:`PartiallyInvResNNUNet` (same arguments; ``lift`` instead of ``anchor_every``),
    but ``deep_supervision=True`` raises: its decoder is inside the invertible body. Train it
    with nnU-Net's ``nnUNetTrainerNoDeepSupervision`` (``-tr``). ``features_per_stage`` is read
    as :func:`~invseg.nets.fully_invertible_channels` reads ``channels``.

    Raises:
        ValueError: ``deep_supervision=True`` (and a forward while ``decoder.deep_supervision``
            is true), or an argument the net cannot honour.

    Example:
        >>> import torch
        >>> net = FullyInvResNNUNet(
        ...     4, 3, n_stages=2, features_per_stage=[8, 16], conv_op=nn.Conv3d,
        ...     kernel_sizes=3, strides=[1, 2], n_conv_per_stage=2,
        ... )
        >>> net(torch.randn(1, 4, 8, 8, 8)).shape
        torch.Size([1, 3, 8, 8, 8])
    """

    net_class = FullyInvResUNet
    own_keys = ("lift",)

    def __init__(
        self, input_channels: int, num_classes: int, *, lift: bool = False, **arch_kwargs: Any
    ) -> None:
        if arch_kwargs.get("deep_supervision"):
            raise ValueError(FULLY_DS_HELP)
        super().__init__(input_channels, num_classes, lift=lift, **arch_kwargs)

    def make_decoder(self, channels: Sequence[int], num_classes: int, on: bool) -> nn.Module:
        return NoDeepSupervision()

    def forward(self, x: Tensor) -> Tensor:
        if self.decoder.deep_supervision:
            raise ValueError(FULLY_DS_HELP)
        return self.net(x)
