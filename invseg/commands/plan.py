"""``invseg plan``: the peak memory of one training step of a config's model, per memory mode.

For the config's model in each memory mode it supports (``store``/``checkpoint`` for
``UNet3D``; ``store``/``checkpoint``/``invert`` for the InvRes nets) the planner
(:mod:`invseg.runtime.planner`) measures one real training step at three small cubes (on CPU
unless ``--device cuda``) and extrapolates in voxels. ``--shape D H W`` prints ``peak_bytes``
and its parts for exactly that input (padded to the net's multiple, as the net pads it);
``--budget`` prints the largest cubic crop and the largest batch at the full BraTS field of
view (4 x 240 x 240 x 155) within it.

Example:
    The claim on the README's first screen::

        invseg plan configs/brats_fully_invres.yaml --shape 240 240 155 --budget 12GB
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from invseg.runtime.plan_report import Candidate, fit_candidate, fit_shape, plan_row
from invseg.runtime.planner import TARGETS, parse_bytes

__all__ = ["BRATS_FOV", "config_candidates", "run", "verify_cuda"]

BRATS_FOV = (240, 240, 155)
MODES = ("store", "checkpoint", "invert")
GiB = 2**30


def config_candidates(path: str | Path) -> list[Candidate]:
    """The config's model in each memory mode it supports (its ``memory_modes``).

    ``path`` is a YAML file or a packaged config name; only its model section is read.
    """
    from invseg.nets.registry import model_class
    from invseg.nets.vae import vae_kwargs
    from invseg.runtime.config import instantiate_model, model_arguments
    from invseg.tasks.config import load_config

    cfg = dict(load_config(path).model)
    name, _ = model_arguments(cfg)
    cls = model_class(name)
    params = inspect.signature(cls).parameters
    channels = cfg.get("channels", params["channels"].default if "channels" in params else None)
    multiple = 2 ** (len(channels) - 1) if channels else 8
    in_channels = int(cfg.get("in_channels", params["in_channels"].default))
    modes = (
        tuple(getattr(cls, "memory_modes", MODES))
        if "memory" in params
        else (str(cfg.get("memory", "store")),)
    )

    def make(mode: str) -> Callable[[tuple[int, int, int]], nn.Module]:
        def fn(shape: tuple[int, int, int]) -> nn.Module:
            c = cfg | ({"memory": mode} if "memory" in params else {})
            return instantiate_model(vae_kwargs(c, shape))  # the VAE is built for the input

        return fn

    return [Candidate(name, m, make(m), multiple, in_channels) for m in modes]


def _text(rows: Sequence[dict[str, Any]]) -> str:
    lines = []
    for r in rows:
        lines.append(f"{r['model']} {r['memory']} (target {r['target']}):")
        if "peak_bytes" in r:
            shape = "x".join(str(s) for s in r["shape"])
            parts = ", ".join(
                f"{k.removesuffix('_bytes')} {r[k] / GiB:.2f}"
                for k in ("param_bytes", "optimizer_bytes", "graph_bytes", "temporary_bytes",
                          "overhead_bytes")
            )  # fmt: skip
            lines.append(
                f"  batch {r['batch']} x {shape}: peak {r['peak_bytes'] / GiB:.2f} GiB "
                f"({parts}; saved for backward {r['saved_bytes'] / GiB:.2f}); "
                f"extrapolation error {100 * r['extrapolation_error']:.1f}%"
            )
        if "budget_bytes" in r:
            fov = "x".join(str(s) for s in r["fov"])
            lines.append(
                f"  within {r['budget_bytes'] / GiB:.2f} GiB: largest cube {r['max_cube'] or '-'}"
                f" at batch {r.get('batch', 1)}; batch {r['fov_batch'] or 'none'} at {fov}; "
                f"extrapolation error {100 * r['cube_extrapolation_error']:.1f}%"
            )
    return "\n".join(lines) + "\n"


def run(
    config: str | Path,
    *,
    shape: Sequence[int] | None = None,
    batch: int = 1,
    budget: str | None = None,
    target: str | None = None,
    amp: str | None = None,
    as_json: bool = False,
    device: str = "cpu",
    cubes: Sequence[int] | None = None,
) -> str:
    """The ``invseg plan`` command: returns the text (or JSON) to print.

    Args:
        config: training config (its model section).
        shape: spatial input shape ``(D, H, W)`` to plan exactly.
        batch: batch size at ``shape`` and for the largest cube.
        budget: memory budget (e.g. ``"12GB"``); default 12GB when no ``shape`` is given.
        target: ``"cuda"`` (default) or ``"cpu"``: which device's per-op temporaries and
            overhead count. A CPU plan at ``shape`` is measured on slabs of its D x H
            (:func:`~invseg.runtime.planner.slab_shapes`), where every convolution picks the
            kernel it picks at ``shape``.
        amp: ``None``, ``"bf16"`` or ``"fp16"``.
        as_json: JSON keyed ``"Model:memory"``.
        device: where to measure; ``cuda`` also trains the largest cube (and one above)
            under a memory cap (:func:`verify_cuda`).
        cubes: the three measurement cubes (default
            :func:`~invseg.runtime.planner.default_sizes` of the net's multiple).

    Raises:
        ValueError: a bad budget, shape, batch or target.
    """
    if shape is None and budget is None:
        budget = "12GB"
    budget_bytes = parse_bytes(budget) if budget is not None else None
    target = target or "cuda"
    if target not in TARGETS:
        raise ValueError(f"--target must be one of {TARGETS}, got {target!r}")
    if int(batch) < 1:
        raise ValueError(f"--batch must be >= 1, got {batch}")
    if shape is not None and (len(shape) != 3 or min(int(s) for s in shape) < 1):
        raise ValueError(f"--shape needs 3 positive sizes D H W, got {list(shape)}")
    rows = []
    measure_on = "cuda" if device.startswith("cuda") else "cpu"
    for cand in config_candidates(config):
        fit = shape_fit = None
        if budget_bytes is not None or target == "cuda":
            fit = fit_candidate(cand, amp=amp, device=measure_on, sizes=cubes, batch=int(batch))
        if shape is not None and target == "cpu":
            shape_fit = fit_shape(cand, shape, batch=int(batch), amp=amp)
        row = plan_row(
            cand, fit, shape_fit=shape_fit, shape=shape, batch=int(batch),
            budget_bytes=budget_bytes, fov=BRATS_FOV, target=target,
        )  # fmt: skip
        if device.startswith("cuda") and budget_bytes and row.get("max_cube"):
            row["verify"] = verify_cuda(cand, row["max_cube"], budget_bytes, amp=amp)
        rows.append(row)
    if as_json:
        return json.dumps({f"{r['model']}:{r['memory']}": r for r in rows}, indent=2)
    return _text(rows)


def verify_cuda(cand: Candidate, cube: int, budget: int, *, amp: str | None = None) -> dict:
    """Under ``set_per_process_memory_fraction(budget)``: does ``cube`` fit, ``cube + m`` not?"""
    import torch

    from invseg.runtime.step_memory import amp_context

    dev = torch.device("cuda")
    total = torch.cuda.get_device_properties(dev).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, budget / total), dev)

    def fits(s: int) -> bool:
        try:
            net = cand.build_fn((s, s, s)).to(dev)
            opt = torch.optim.Adam(net.parameters())
            for _ in range(2):  # the second step holds Adam state
                with amp_context(amp, dev):
                    out = net(torch.randn(1, cand.in_channels, s, s, s, device=dev))
                out = out[0] if isinstance(out, tuple) else out
                out.float().mean().backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            return True
        except torch.OutOfMemoryError:
            return False
        finally:
            torch.cuda.empty_cache()

    step = max(cand.multiple, 8)
    result = {"cube": cube, "fits": fits(cube), "above_fails": not fits(cube + step)}
    torch.cuda.set_per_process_memory_fraction(1.0, dev)
    return result
