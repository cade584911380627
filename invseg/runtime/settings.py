"""How :class:`~invseg.runtime.loop.Loop` runs a task: :class:`LoopSettings`, built from a config.

Every period of the loop counts optimizer steps: ``train.steps``, ``train.val_every_steps``,
``train.checkpoint_every``, ``train.warmup_steps``. :meth:`LoopSettings.schedule` is the line the
loop prints at the start, so the unit (and what one step sees) is on screen.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["LoopSettings"]

#: ``train`` keys that :meth:`LoopSettings.from_config` copies, when the task's section has them.
TRAIN_KEYS = (
    "accumulation",
    "checkpoint_every",
    "val_every_steps",
    "max_minutes",
    "amp",
    "grad_clip",
    "progress",
    "lr",
    "weight_decay",
)


@dataclass
class LoopSettings:
    """How :class:`~invseg.runtime.loop.Loop` runs a task.

    Attributes:
        run_dir: the run folder. total_steps: optimizer steps to reach.
        config: the resolved config (plain data) stored in config.yaml and checkpoints.
        resume_mutable: dotted config keys a ``--resume`` may change; other changes are refused.
        val_every_steps: optimizer steps between validations (``None``: never); the run also
            validates at its end, unless a signal stopped it.
        lr, weight_decay: applied to a resumed optimizer when the config changed them.
        resume_hint: the command that continues a run, without the run folder and the overrides
            (:meth:`resume_command` adds them). overrides: the ``--set`` items of this run.
        per_step: what one optimizer step sees (``"4 crops (...)"``), printed by :meth:`schedule`.
    """

    run_dir: Path
    total_steps: int
    config: dict[str, Any]
    accumulation: int = 1
    checkpoint_every: int | None = None
    val_every_steps: int | None = None
    max_minutes: float | None = None
    amp: bool = False
    grad_clip: float | None = None
    progress: bool = True
    resume: bool = False
    lr: float | None = None
    weight_decay: float | None = None
    resume_mutable: tuple[str, ...] = ()
    resume_hint: str = "invseg train CONFIG --resume"
    overrides: tuple[str, ...] = ()
    per_step: str = ""
    csv_columns: tuple[str, ...] = field(default=("step", "epoch", "loss", "lr", "time_s"))

    @classmethod
    def from_config(
        cls,
        cfg: Any,
        *,
        total_steps: int,
        command: str,
        source: Any = None,
        overrides: Sequence[str] = (),
        resume: bool = False,
        resume_mutable: Sequence[str] = (),
        per_step: str = "",
    ) -> LoopSettings:
        """The settings of a resolved config: ``output.dir`` and the ``train`` keys the loop
        reads (:data:`TRAIN_KEYS`; a key the task's ``train`` section lacks keeps its default).

        Args:
            cfg: the resolved config (a :class:`~invseg.runtime.config.Section` or a mapping).
            total_steps: optimizer steps to reach.
            command: the command that trains, e.g. ``"invseg train"``.
            source: the config as given: a file or packaged name is repeated in the resume
                hint; anything else (a mapping, ``None``) reads ``CONFIG`` there.
            overrides: the ``--set`` items, repeated by :meth:`resume_command`.
            resume: continue from ``last.pt``. resume_mutable: keys a resume may change.
            per_step: what one optimizer step sees, for :meth:`schedule`.

        Example:
            >>> cfg = {"train": {"lr": 0.1, "val_every_steps": 5}, "output": {"dir": "runs/x"}}
            >>> s = LoopSettings.from_config(cfg, total_steps=10, command="invseg train",
            ...                              source="demo", overrides=["train.lr=0.1"])
            >>> s.val_every_steps, s.lr, s.resume_command()
            (5, 0.1, 'invseg train demo --resume --set train.lr=0.1 -o runs/x')
        """
        plain = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
        train = plain.get("train") or {}
        named = isinstance(source, (str, os.PathLike))
        return cls(
            run_dir=Path(plain["output"]["dir"]).expanduser(),
            total_steps=int(total_steps),
            config=plain,
            resume=resume,
            resume_mutable=tuple(resume_mutable),
            resume_hint=f"{command} {shlex.quote(str(source)) if named else 'CONFIG'} --resume",
            overrides=tuple(overrides),
            per_step=per_step,
            **{key: train[key] for key in TRAIN_KEYS if key in train},
        )

    def resume_command(self) -> str:
        """``resume_hint`` with this run's ``--set`` items and its folder (``-o DIR``).

        Example:
            >>> LoopSettings(Path("runs/a b"), 1, {}, overrides=("data.crop=[8, 8, 8]",)
            ...              ).resume_command()
            "invseg train CONFIG --resume --set 'data.crop=[8, 8, 8]' -o 'runs/a b'"
        """
        sets = "".join(f" --set {shlex.quote(item)}" for item in self.overrides)
        return f"{self.resume_hint}{sets} -o {shlex.quote(str(self.run_dir))}"

    def schedule(self) -> str:
        """The line the loop prints at the start: steps, what a step sees, the periods.

        Example:
            >>> s = LoopSettings(Path("r"), 100, {}, val_every_steps=30, checkpoint_every=50,
            ...                  per_step="4 crops")
            >>> print(s.schedule())  # doctest: +NORMALIZE_WHITESPACE
            schedule: 100 optimizer steps of 4 crops; validation every 30 steps and at the end;
            last.pt every 50 steps and at each epoch end
        """
        each = f" of {self.per_step}" if self.per_step else ""
        val = f"{_every(self.val_every_steps)} and at the end" if self.val_every_steps else "none"
        ckpt = f"{_every(self.checkpoint_every)} and " if self.checkpoint_every else ""
        ckpt = f"; last.pt {ckpt}at each epoch end"
        return f"schedule: {self.total_steps} optimizer steps{each}; validation {val}{ckpt}"


def _every(n: int) -> str:
    return "every step" if n == 1 else f"every {n} steps"
