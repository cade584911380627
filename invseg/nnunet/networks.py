r"""invseg's InvRes U-Nets with nnU-Net v2's network signature, for ``nnUNetTrainer``.

nnU-Net v2 builds the network named by a plans file's ``architecture.network_class_name`` as
``cls(input_channels=..., num_classes=..., **arch_kwargs, deep_supervision=...)``, calls
``network.apply(network.initialize)``, compiles it with ``torch.compile`` on CUDA and switches
deep supervision with ``network.decoder.deep_supervision = bool``. The classes here do all
of that around :class:`~invseg.nets.PartiallyInvResUNet` and
:class:`~invseg.nets.FullyInvResUNet` (the ``net`` attribute), without nnunetv2 installed:

* the arguments are read by :func:`invseg.nnunet.arch.net_options` (what is refused, the
  block rule, per-axis strides such as ``[1, 2, 2]``), plus invseg's own ``memory``,
  ``blocks``, ``anchor_every`` (Partially) and ``lift`` (Fully);
* **deep supervision** is the nets' own (both nets): the net is always built with its 1x1
  heads (``deep_supervision=True``), so weights load whichever way they were trained, and
  ``deep_supervision`` only sets whether ``forward`` returns them. While it is on, in training
  and evaluation alike (``net.supervise_in_eval``: nnU-Net's ``validation_step`` reads
  ``output[0]`` in eval mode), ``forward`` returns ``n_stages - 1`` logit maps, full
  resolution first, level :math:`k` divided per axis by the product of the strides down to it;
  nnU-Net's loss weights (:math:`2^{-k}`, the last one 0, normalised) line up with them.
  ``decoder`` is the net itself (a property, not a second name for its weights in the
  ``state_dict``), so nnU-Net's ``decoder.deep_supervision`` is the net's own switch;
* :meth:`~NNUNetInvRes.initialize`: nnU-Net's He initialisation of every convolution (the
  supervision heads too), except the last convolution of each residual function of each
  invertible block, set to zero, as nnU-Net's residual encoders zero their last norm before
  the addition: every coupling starts as the identity, so no depth of invertible stages
  amplifies activations at the start and each inverse starts exact;
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

__all__ = ["FullyInvResNNUNet", "NNUNetInvRes", "PartiallyInvResNNUNet", "residual_ends"]

_CONVS = (nn.Conv3d, nn.ConvTranspose3d)
#: nnU-Net's ``InitWeights_He(1e-2)``: the LeakyReLU slope its He initialisation assumes
HE_SLOPE = 1e-2


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


class NNUNetInvRes(nn.Module):
    """What both wrappers share: nnU-Net's arguments, ``decoder``, ``initialize``, ``memory``,
    ``forward`` (the net's).

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
        self.net = self.net_class(
            3, input_channels, num_classes, memory=memory, deep_supervision=True, **options, **own
        )
        self.net.supervise_in_eval = True  # nnU-Net validates on every level
        self.net.deep_supervision = bool(deep_supervision)
        self.num_classes = num_classes

    @property
    def decoder(self) -> nn.Module:
        """What nnU-Net switches deep supervision on (``decoder.deep_supervision = bool``): the
        net itself, whose ``deep_supervision`` property that sets."""
        return self.net

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        return self.net(x)

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
        **arch_kwargs: nnU-Net's ``arch_kwargs`` (``n_stages``, ``features_per_stage``,
            ``conv_op``, ``kernel_sizes``, ``strides``, ``n_conv_per_stage``,
            ``n_conv_per_stage_decoder``, ``conv_bias``, ``norm_op``, ``norm_op_kwargs``,
            ``dropout_op``, ``dropout_op_kwargs``, ``nonlin``, ``nonlin_kwargs``;
            :mod:`invseg.nnunet.arch` says how each is read).
        deep_supervision: return one logit map per decoder stage, in training and evaluation
            (the net's own switch, ``decoder.deep_supervision``; the heads exist either way).
        n_blocks_per_stage: residual-encoder plans' blocks per stage, instead of
            ``n_conv_per_stage``.
        memory: ``"invert"`` (default), ``"checkpoint"`` or ``"store"``.
        blocks: invertible blocks per level (an int or one per level), instead of the rule.
        anchor_every: see :class:`~invseg.nets.PartiallyInvResUNet`.

    Shape:
        ``(B, input_channels, D, H, W) -> (B, num_classes, D, H, W)``; under deep supervision a
        list whose entry :math:`k` (``k = 0 .. n_stages - 2``) is ``(B, num_classes, ceil(D /
        s_D), ...)``, :math:`s` the product of ``strides[1 .. k]`` on each axis.

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
        >>> net.decoder.deep_supervision = False  # as nnU-Net's trainer switches it
        >>> net(torch.randn(1, 4, 16, 16, 16)).shape
        torch.Size([1, 3, 16, 16, 16])
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


class FullyInvResNNUNet(NNUNetInvRes):
    r""":class:`~invseg.nets.FullyInvResUNet` as an nnU-Net v2 architecture.

    As :class:`PartiallyInvResNNUNet` (same arguments and outputs; ``lift`` instead of
    ``anchor_every``): deep supervision reads each decoder level through a feature tap inside
    the invertible body. ``features_per_stage`` is read as
    :func:`~invseg.nets.fully_invertible_channels` reads ``channels`` with the plans' strides
    (a stride's channel factor is the product of its entries: 4 for ``[1, 2, 2]``).

    Raises:
        ValueError: an argument the net cannot honour (naming its ``arch_kwargs`` entry).

    Example:
        >>> import torch
        >>> net = FullyInvResNNUNet(
        ...     4, 3, n_stages=3, features_per_stage=[8, 16, 32], conv_op=nn.Conv3d,
        ...     kernel_sizes=3, strides=[1, [1, 2, 2], 2], n_conv_per_stage=2,
        ...     deep_supervision=True,
        ... )
        >>> [tuple(o.shape) for o in net(torch.randn(1, 4, 8, 16, 16))]
        [(1, 3, 8, 16, 16), (1, 3, 8, 8, 8)]
    """

    net_class = FullyInvResUNet
    own_keys = ("lift",)

    def __init__(
        self, input_channels: int, num_classes: int, *, lift: bool = False, **arch_kwargs: Any
    ) -> None:
        super().__init__(input_channels, num_classes, lift=lift, **arch_kwargs)
