"""``invseg train``: train a segmentation network from a config (one process, or torchrun).

The run folder (``output.dir`` or ``-o``) receives ``last.pt`` and ``best.pt`` (see
:mod:`invseg.runtime.checkpoint`), ``metrics.csv``, ``config.yaml``, ``tb/`` and ``curves.png``;
what is trained is :class:`invseg.tasks.seg.SegTask`, how is :class:`invseg.runtime.loop.Loop`.

Before the first step, and before the run folder is created, every training and validation case
is read and checked (:func:`invseg.data.check_cases`): broken data stops the run with one line
naming the file and the problem, and leaves nothing on disk.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from invseg.runtime.distributed import cleanup, init_from_env
from invseg.runtime.loop import Loop, NonFiniteLossError, TrainingInterrupted
from invseg.runtime.settings import LoopSettings
from invseg.tasks.config import SegConfig, load_config
from invseg.tasks.seg import RESUME_MUTABLE, SegTask, split_cases

__all__ = [
    "NonFiniteLossError",
    "TrainingInterrupted",
    "crops_per_step",
    "split_cases",
    "train",
]


def crops_per_step(cfg: SegConfig, world_size: int = 1) -> str:
    """What one optimizer step of ``cfg`` sees, for the schedule line printed at the start.

    Example:
        >>> cfg = load_config({"train": {"batch_size": 2}, "data": {"num_samples": 3}})
        >>> crops_per_step(cfg)
        '6 crops (train.batch_size 2 x data.num_samples 3)'
        >>> crops_per_step(load_config({"train": {"accumulation": 2}}), world_size=4)
        '2 crops (train.batch_size 1 x data.num_samples 1 x train.accumulation 2) per process'
    """
    t, d = cfg.train, cfg.data
    factors = [f"train.batch_size {t.batch_size}", f"data.num_samples {d.num_samples}"]
    if t.accumulation > 1:
        factors.append(f"train.accumulation {t.accumulation}")
    n = t.batch_size * d.num_samples * t.accumulation
    each = " per process" if world_size > 1 else ""
    return f"{n} crop{'s' if n > 1 else ''} ({' x '.join(factors)}){each}"


def train(
    config: str | Path | Mapping[str, Any],
    *,
    overrides: Sequence[str] = (),
    resume: bool = False,
    output: str | Path | None = None,
) -> Path:
    """Train a segmentation network described by a config.

    Under ``torchrun --nproc_per_node N`` every process calls this; they join one process group
    (gloo on CPU, nccl on CUDA), each reads its own shard of every epoch and only rank 0 writes.
    The data are checked first (every process checks every case, so all of them stop).

    Args:
        config: YAML file, packaged config name (``invseg config list``) or a mapping.
        overrides: ``key=value`` strings with dotted keys, e.g. ``["train.lr=3e-4"]``.
        resume: continue from ``<run>/last.pt``; changed ``train.lr``, ``train.steps``, ... apply
            (and are recorded in ``config.yaml``), other changes are refused.
        output: run folder (default: ``output.dir`` of the config).

    Returns:
        The run folder.

    Raises:
        ConfigError: bad config, unknown key, existing run without ``resume``.
        NonFiniteLossError: the loss became NaN/Inf.
        TrainingInterrupted: SIGINT/SIGTERM (a checkpoint of the current step was written).
        invseg.data.DataError: ``"<file>: <problem>"`` for a truncated or unreadable file,
            a 2-D image, modalities of different shapes or affines, label values outside the
            convention or NaN/Inf voxels (raised before anything is written).

    Example:
        >>> from invseg.commands.train import split_cases  # full runs: see tests/commands
    """
    cfg = load_config(config, overrides)
    if output is not None:  # set directly: a path is no YAML value (``#``, ``:`` in names)
        cfg.output.dir = str(output)
    info = init_from_env(cfg.train.device)
    try:
        task = SegTask(cfg, info)
        settings = LoopSettings.from_config(
            cfg,
            total_steps=task.total_steps,
            command="invseg train",
            source=config,
            overrides=overrides,
            resume=resume,
            resume_mutable=RESUME_MUTABLE,
            per_step=crops_per_step(cfg, info.world_size),
        )
        return Loop(task, settings, info).run()
    finally:
        cleanup(info)
