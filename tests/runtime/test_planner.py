"""The memory planner: measured lines in voxels, the parts of a peak, budgets, and RSS agreement."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from invseg.nets import FullyInvResUNet, PartiallyInvResUNet, UNet3D
from invseg.runtime.planner import (
    CUDA_OVERHEAD_BYTES,
    default_sizes,
    fit_peak,
    largest_cube,
    max_batch,
    measure_step,
    param_bytes,
    parse_bytes,
    plan_model,
    slab_shapes,
    step_bytes,
)

ROOT = Path(__file__).resolve().parents[2]
NETS = {net.__name__: net for net in (UNet3D, PartiallyInvResUNet, FullyInvResUNet)}


def unet(shape: tuple[int, int, int]) -> nn.Module:
    return UNet3D(3, 4, 3, channels=(4, 8), memory="store")


@pytest.fixture(scope="module")
def unet_fit():
    return fit_peak(unet, 4, sizes=(8, 12, 16))


@pytest.mark.parametrize(
    ("text", "expected"),
    [("12GB", 12 * 10**9), ("512MiB", 512 * 2**20), ("1.5g", int(1.5e9)), (64, 64)],
)
def test_parse_bytes_reads_units(text: str | int, expected: int) -> None:
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["", "12XB", "-3GB", "GB"])
def test_parse_bytes_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError, match="memory size"):
        parse_bytes(text)


def test_measure_step_still_gives_the_saved_bytes() -> None:
    net = nn.Sequential(nn.Conv3d(2, 3, 1), nn.Sigmoid())
    assert measure_step(net, 2, 8, batch=2) == (4 * 1024 * (2 + 3), 4 * 1024 * 3)


def test_default_cubes_start_at_32() -> None:
    assert default_sizes(8) == (32, 40, 48) and default_sizes(2) == (32, 34, 36)


def test_fit_rejects_sizes_that_do_not_increase() -> None:
    with pytest.raises(ValueError, match="increasing in voxels"):
        fit_peak(unet, 4, sizes=(16, 8, 24))


def test_graph_line_extrapolates_to_a_larger_cube(unet_fit) -> None:
    assert unet_fit.graph_error < 0.03
    assert [s.shape for s in unet_fit.steps] == [(8,) * 3, (12,) * 3, (16,) * 3]
    from invseg.runtime.step_memory import measure_step_memory

    big = measure_step_memory(unet((24,) * 3), 4, (24, 24, 24))
    assert unet_fit.graph_bytes(24**3) == pytest.approx(big.graph_bytes, rel=0.03)


def test_peak_parts_add_up_and_depend_on_the_target(unet_fit) -> None:
    params = param_bytes(unet((16,) * 3))
    cpu = step_bytes(unet_fit, params, (16, 24, 32), target="cpu")
    gpu = step_bytes(unet_fit, params, (16, 24, 32), target="cuda")
    summed = ("param_bytes", "optimizer_bytes", "graph_bytes", "temporary_bytes", "overhead_bytes")
    for parts in (cpu, gpu):
        assert parts["peak_bytes"] == sum(parts[k] for k in summed)
        assert parts["forward_bytes"] + parts["backward_bytes"] == parts["graph_bytes"]
        assert parts["param_bytes"] == params and parts["optimizer_bytes"] >= 2 * params
    assert gpu["graph_bytes"] == cpu["graph_bytes"]  # every device holds these
    assert gpu["temporary_bytes"] == 0 and gpu["overhead_bytes"] == CUDA_OVERHEAD_BYTES
    assert cpu["temporary_bytes"] > 0 and cpu["overhead_bytes"] == 0
    with pytest.raises(ValueError, match="target"):
        step_bytes(unet_fit, params, 16, target="tpu")


def test_largest_cube_fits_and_the_next_does_not(unet_fit) -> None:
    budget = parse_bytes("40MiB")
    params = param_bytes(unet((8,) * 3))
    plan = largest_cube(unet_fit, lambda s: params, budget_bytes=budget, target="cpu")
    assert plan.max_cube is not None and plan.max_cube % 8 == 0
    assert plan.total_bytes <= budget
    above = step_bytes(unet_fit, params, plan.max_cube + 8, target="cpu")
    assert above["peak_bytes"] > budget
    none = largest_cube(unet_fit, lambda s: params, budget_bytes=1000, target="cpu")
    assert none.max_cube is None and none.total_bytes > 1000


def test_max_batch_is_largest_that_fits(unet_fit) -> None:
    params = param_bytes(unet((8,) * 3))
    budget = step_bytes(unet_fit, params, 48, batch=3)["peak_bytes"]
    assert max_batch(unet_fit, params, (48, 48, 48), budget_bytes=budget) == 3
    assert max_batch(unet_fit, params, (48, 48, 48), budget_bytes=budget - 1) == 2


def test_plan_model_takes_cube_builders_and_grows_with_budget() -> None:
    small = plan_model(
        lambda s: unet((s,) * 3), 4, budget_bytes=parse_bytes("20MiB"), sizes=(8, 16, 24)
    )
    large = plan_model(
        lambda s: unet((s,) * 3), 4, budget_bytes=parse_bytes("200MiB"), sizes=(8, 16, 24)
    )
    assert large.max_cube > small.max_cube and large.target == "cpu"


# One real training step in a fresh process: the peak RSS increase over the step (VmHWM reset
# through /proc/self/clear_refs), with glibc's mmap threshold pinned so that freed tensors leave
# RSS. A first step at the same size allocates Adam's state and oneDNN's caches: the measured
# step is a steady-state one.
_RSS_SCRIPT = """
import json, os, sys, torch
torch.set_num_threads(1)
import invseg.nets
spec = json.loads(sys.argv[1])
net = getattr(invseg.nets, spec.pop("net"))(3, 4, 3, **spec)
opt = torch.optim.Adam(net.parameters(), 1e-9)
def step(s):
    out = net(torch.randn(1, 4, s, s, s))
    (out[0] if isinstance(out, tuple) else out).float().mean().backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
def hwm():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))
peaks = []
for s in map(int, sys.argv[2:]):
    step(s)
    before = rss()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    step(s)
    peaks.append(hwm() - before)
print(json.dumps(peaks))
"""


def _rss_increase(spec: dict, sizes: list[int]) -> list[int]:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, json.dumps(spec), *map(str, sizes)],
        env=env, capture_output=True, text=True, check=True, timeout=600,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


_SLOW = pytest.mark.slow
_AGREEMENT = [
    pytest.param({"net": "FullyInvResUNet", "memory": "invert"}, id="fully-invert"),
    pytest.param(
        {"net": "FullyInvResUNet", "memory": "invert", "lift": True}, id="fully-lift", marks=_SLOW
    ),
    pytest.param(
        {"net": "PartiallyInvResUNet", "memory": "invert"}, id="partially-invert", marks=_SLOW
    ),
    pytest.param(
        {"net": "PartiallyInvResUNet", "memory": "checkpoint"}, id="partially-ckpt", marks=_SLOW
    ),
    pytest.param({"net": "UNet3D", "memory": "store"}, id="unet3d-store", marks=_SLOW),
]


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU memory test")
@pytest.mark.parametrize("spec", _AGREEMENT)
def test_cpu_peak_matches_the_peak_rss_of_a_real_step(spec: dict) -> None:
    """Channels (8, 16): a 96^3 step takes seconds on one core; 48^3 and 96^3 straddle the
    size where the full-resolution convolutions leave PyTorch's native CPU kernel."""
    kwargs = {k: v for k, v in spec.items() if k != "net"} | {"channels": (8, 16)}

    def build(shape: tuple[int, int, int]) -> nn.Module:
        return NETS[spec["net"]](3, 4, 3, **kwargs)

    params = param_bytes(build((8, 8, 8)))
    cubes = fit_peak(build, 4, sizes=(16, 24, 32))  # what a GPU plan extrapolates from
    sizes = [48, 96]
    measured = _rss_increase(spec | {"channels": [8, 16]}, sizes)
    for size, rss in zip(sizes, measured):
        fit = fit_peak(build, 4, sizes=slab_shapes((size,) * 3, 4))
        parts = step_bytes(fit, params, size, target="cpu")
        # weights and Adam state are in the baseline; gradients are allocated by the step
        planned = parts["graph_bytes"] + parts["temporary_bytes"]
        assert abs(planned - rss) / rss < 0.15, (size, planned / 2**20, rss / 2**20)
        assert cubes.graph_bytes(size**3) == pytest.approx(parts["graph_bytes"], rel=0.05)
