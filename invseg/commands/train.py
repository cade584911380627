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
from invseg.runtime.loop import Loop, LoopSettings, NonFiniteLossError, TrainingInterrupted
from invseg.tasks.config import load_config
from invseg.tasks.seg import RESUME_MUTABLE, SegTask, split_cases

__all__ = ["NonFiniteLossError", "TrainingInterrupted", "split_cases", "train"]


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
        t = cfg.train
        settings = LoopSettings(
            run_dir=Path(cfg.output.dir).expanduser(),
            total_steps=task.total_steps,
            config=cfg.to_dict(),
            accumulation=t.accumulation,
            checkpoint_every=t.checkpoint_every,
            val_every_epochs=t.val_every,
            max_minutes=t.max_minutes,
            amp=t.amp,
            grad_clip=t.grad_clip,
            progress=t.progress,
            resume=resume,
            lr=t.lr,
            weight_decay=t.weight_decay,
            resume_mutable=RESUME_MUTABLE,
            resume_hint=f"invseg train {config if not isinstance(config, Mapping) else 'CONFIG'}"
            " --resume",
            overrides=tuple(overrides),
        )
        return Loop(task, settings, info).run()
    finally:
        cleanup(info)
