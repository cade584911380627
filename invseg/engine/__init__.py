"""The coupling engine: activation-free backpropagation through invertible blocks.

Pure PyTorch (no MONAI). An invertible block is any ``nn.Module`` with
``forward(x, *context)`` and ``inverse(y, *context)``; :class:`InvertibleSequential` chains
them and trains them without storing activations (``memory="invert"``), with
``torch.utils.checkpoint`` (``"checkpoint"``) or with plain autograd (``"store"``).
"""

from __future__ import annotations

from invseg.engine._engine import (
    forward_block,
    forward_owned,
    reverse_block,
    reverse_owned,
    shares_storage,
)
from invseg.engine._memcnn import import_memcnn
from invseg.engine._protocol import MEMORY_MODES, is_invertible
from invseg.engine._tape import Tape
from invseg.engine.coupling import AdditiveCoupling, AffineCoupling
from invseg.engine.handover import Slot, slot_conv
from invseg.engine.memory import activation_bytes
from invseg.engine.resample import (
    InvertibleDownsample3d,
    InvertibleUpsample3d,
    OrthogonalMix,
    Squeeze3d,
    squeeze3d,
    unsqueeze3d,
)
from invseg.engine.sequential import (
    InverseDriftWarning,
    Inverted,
    InvertibleSequential,
    set_memory,
)
from invseg.engine.stride import channel_factor, check_stride

__all__ = [
    "MEMORY_MODES",
    "AdditiveCoupling",
    "AffineCoupling",
    "InverseDriftWarning",
    "Inverted",
    "InvertibleDownsample3d",
    "InvertibleSequential",
    "InvertibleUpsample3d",
    "OrthogonalMix",
    "Slot",
    "Squeeze3d",
    "Tape",
    "activation_bytes",
    "channel_factor",
    "check_stride",
    "forward_block",
    "forward_owned",
    "import_memcnn",
    "is_invertible",
    "reverse_block",
    "reverse_owned",
    "set_memory",
    "shares_storage",
    "slot_conv",
    "squeeze3d",
    "unsqueeze3d",
]
