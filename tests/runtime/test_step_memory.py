"""One measured training step: saved bytes, the graph rebuilt in backward, op temporaries."""

from __future__ import annotations

import pytest
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from invseg.runtime.step_memory import (
    NATIVE_CONV_LIMIT,
    Moment,
    StepMemory,
    cpu_temporary,
    measure_step_memory,
    saved_bytes,
)


class Pointwise(nn.Module):
    """A 1x1 conv, then exp and sin: stored, or recomputed in backward (checkpoint)."""

    def __init__(self, recompute: bool) -> None:
        super().__init__()
        self.conv, self.recompute = nn.Conv3d(1, 1, 1), recompute

    @staticmethod
    def body(x: Tensor) -> Tensor:
        return (2 * x).exp().sin()

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        return checkpoint(self.body, x, use_reentrant=False) if self.recompute else self.body(x)


def test_saved_bytes_count_each_storage_once() -> None:
    net = nn.Sequential(nn.Conv3d(2, 3, 1), nn.Sigmoid())
    total, largest = saved_bytes(net, 2, (8, 8, 8), batch=2)
    voxels = 2 * 8**3
    assert (total, largest) == (4 * voxels * (2 + 3), 4 * voxels * 3)


def test_graph_rebuilt_in_backward_is_measured_though_not_saved() -> None:
    stored = measure_step_memory(Pointwise(False), 1, (16, 16, 16))
    rebuilt = measure_step_memory(Pointwise(True), 1, (16, 16, 16))
    volume = 4 * 16**3
    # checkpoint keeps its input instead of exp's output: the same saved bytes ...
    assert stored.saved_bytes == rebuilt.saved_bytes == 2 * volume
    # ... but backward holds the recomputed exp and sin next to the gradients
    assert rebuilt.backward_bytes >= stored.backward_bytes + volume
    assert rebuilt.graph_bytes > stored.graph_bytes >= stored.saved_bytes + volume
    assert rebuilt.forward_bytes + rebuilt.backward_bytes == rebuilt.graph_bytes


def test_optimizer_state_and_weights_are_outside_the_step() -> None:
    m = measure_step_memory(nn.Conv3d(1, 2, 1), 1, (8, 8, 8))
    assert m.param_bytes == 4 * (2 + 2)
    assert m.state_bytes == 2 * m.param_bytes + 2 * 4  # two moments, a step count per tensor


def test_native_cpu_convolution_column_buffer_is_a_temporary() -> None:
    m = measure_step_memory(nn.Conv3d(2, 4, 3, padding=1), 2, (8, 8, 8))
    columns = 2 * 27 * 8**3 * 4  # C_in * prod(kernel) * output voxels, float32
    convs = [x for x in m.moments if x.conv is not None]
    assert len(convs) == 2  # forward, and the weight gradient in backward
    for x in convs:
        assert x.conv == (1, 2 * 8 * 8, (3, 3, 3), 1, False, 2 * 8**3 * 4, columns)
        assert x.temporary >= columns
    assert m.peak_bytes >= m.graph_bytes + columns


def _step(shape: tuple[int, int, int], moment: Moment) -> StepMemory:
    return StepMemory(shape, 1, "cpu", None, 0, 0, 0, 0, 0, 0, 0, (moment,))


def test_cpu_temporaries_follow_the_kernel_pytorch_picks() -> None:
    # a 4-channel 3^3 conv measured at 16^3: native kernel, columns plus a 1-channel copy
    columns, other, inputs = 4 * 27 * 16**3 * 4, 1 * 16**3 * 4, 4 * 16**3 * 4
    conv = (1, 4 * 16 * 16, (3, 3, 3), 1, False, inputs, columns)
    moment = Moment(graph=0, temporary=columns + other, conv=conv)
    step = _step((16, 16, 16), moment)
    assert 4 * 32 * 32 <= NATIVE_CONV_LIMIT < 4 * 96 * 96
    # still native at 32^3: the measured bytes, scaled in voxels
    assert cpu_temporary(moment, step, (32, 32, 32), 1) == pytest.approx((columns + other) * 8)
    # oneDNN at 96^3: no columns, one copy of the input instead
    assert cpu_temporary(moment, step, (96, 96, 96), 1) == pytest.approx((other + inputs) * 216)


def test_batch_above_one_takes_onednn() -> None:
    conv = (1, 64, (3, 3, 3), 1, False, 4096, 110592)
    moment = Moment(graph=0, temporary=110592, conv=conv)
    step = _step((8, 8, 8), moment)
    assert cpu_temporary(moment, step, (8, 8, 8), 1) == 110592
    assert cpu_temporary(moment, step, (8, 8, 8), 2) == 2 * 4096  # no columns, one input copy


def test_measuring_rejects_an_unknown_precision() -> None:
    with pytest.raises(ValueError, match="amp must be"):
        measure_step_memory(nn.Conv3d(1, 1, 1), 1, (8, 8, 8), amp="fp8")


def test_a_tuple_output_with_none_entries_is_trained_on_its_tensors() -> None:
    class Pair(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv3d(1, 1, 1)

        def forward(self, x: Tensor) -> tuple[Tensor, None]:
            return self.conv(x), None

    m = measure_step_memory(Pair(), 1, (8, 8, 8))
    assert m.saved_bytes == 4 * 8**3 and m.graph_bytes >= 2 * 4 * 8**3
