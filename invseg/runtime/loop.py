"""The one training loop: AMP, DDP, exact resume, NaN guard, signals, progress, TensorBoard + CSV.

A task (:class:`Task`: segmentation in :mod:`invseg.tasks.seg`, MoDL in :mod:`invseg.tasks.recon`)
supplies the model, optimizer, batches, loss and validation; :class:`Loop` runs it and owns the
run folder:

* ``last.pt``: written every ``checkpoint_every`` optimizer steps and at each epoch end, but only
  once the next loss is finite (the weights are validated by a finite loss after them), and at
  the end of the run; ``best.pt``: the best validation score (:attr:`Task.score`), validated
  every ``val_every_steps`` optimizer steps and at the end of the run (not after a signal);
* ``metrics.csv`` (a row per optimizer step, matching ``last.pt``); ``config.yaml`` (the config
  of ``last.pt``: a resume rewrites it with its first checkpoint); ``tb/`` (a resume purges the
  steps after its checkpoint, which it logs again);
* SIGINT / SIGTERM finish the current step, write ``last.pt`` and raise
  :class:`TrainingInterrupted` (exit status 130 / 143 in the CLI), so a preempted job resumes
  where it stopped;
* stale ``.NAME.*.tmp`` files of killed writes are removed at the start.

Divergence rule (:class:`~invseg.runtime.task.DivergenceGuard`): the run stops with
:class:`TrainingDiverged` (:class:`NonFiniteLossError` for NaN/Inf; CLI exit status 2), keeping
``last.pt`` and ``best.pt`` of before the trouble, when a training loss is NaN/Inf or above 1e3 x
the median of the run's first 5 losses (those before it; off while that median is <= 0), when the
weights are NaN/Inf or ``max |w|`` is above 1e3 x ``max(1, max |w| before step 1)`` (checked
after every optimizer step whose state is saved: before ``last.pt`` is staged, before validation
and at the end), or when an optimizer step overflows. Healthy training stays far below both
factors (the loss falls; Adam moves a weight by about ``lr`` a step); checkpoints store both
references, so a resumed run applies the same rule.
"""

from __future__ import annotations

import contextlib
import io
import math
import signal
import time
from collections.abc import Iterator, Sized
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from invseg.files import (
    atomic_write,
    atomic_write_text,
    read_rows,
    remove_stale_temps,
    write_rows,
)
from invseg.runtime.checkpoint import capture_rng, load_checkpoint, save_checkpoint
from invseg.runtime.config import yaml_dump
from invseg.runtime.device import Amp
from invseg.runtime.distributed import DistInfo, all_reduce_mean, barrier
from invseg.runtime.restore import check_same_model, restore_training
from invseg.runtime.settings import LoopSettings
from invseg.runtime.task import (
    DivergenceGuard,
    NonFiniteLossError,
    Task,
    TrainingDiverged,
    TrainingInterrupted,
    apply_changed_hparams,
    check_resume,
    check_run_folder,
    deferred_signals,
    stop_error,
    weights_max,
)

__all__ = [
    "Loop",
    "NonFiniteLossError",
    "Task",
    "TrainingDiverged",
    "TrainingInterrupted",
]


class Loop:
    """Run a :class:`Task` to ``settings.total_steps`` optimizer steps.

    Args:
        task: model, optimizer, scheduler, batches, loss, validation.
        settings: run folder, schedule, checkpoints, resume.
        info: this process's rank and device.
    """

    def __init__(self, task: Task, settings: LoopSettings, info: DistInfo) -> None:
        self.task, self.s, self.info = task, settings, info
        self.amp = Amp(info.device, settings.amp)
        self.last_path = settings.run_dir / "last.pt"
        self.best_path = settings.run_dir / "best.pt"
        self.rows: list[dict[str, Any]] = []
        self.best_metric, self.best_step = -math.inf, -1
        self.saved_step = -1  # step of the last.pt on disk (-1: none)
        self.pending: tuple[int, bytes, int] | None = None  # (step, checkpoint bytes, rows)
        self.signum = 0
        self.writer: Any = None
        self.guard = DivergenceGuard()
        self.config_written = False

    # ------------------------------------------------------------------ messages
    def log(self, msg: str) -> None:
        """Print on rank 0 without breaking the progress bar."""
        if self.info.is_main:
            tqdm.write(msg)

    # ------------------------------------------------------------------ checkpoints
    def _state(self, epoch: int, step: int, batch_in_epoch: int) -> dict[str, Any]:
        t = self.task
        return {
            "model": t.model.state_dict(),
            "optimizer": t.optimizer.state_dict(),
            "scheduler": t.scheduler.state_dict() if t.scheduler is not None else None,
            "scaler": self.amp.scaler.state_dict() if self.amp.scaler is not None else None,
            "epoch": epoch,
            "step": step,
            "batch_in_epoch": batch_in_epoch,
            "best_metric": self.best_metric,
            "best_step": self.best_step,
            "rng": capture_rng(),
            "config": self.s.config,
            "meta": t.meta(),
            "guard": self.guard.state(),
        }

    def checkpoint(self, epoch: int, step: int, batch_in_epoch: int, *, final: bool) -> None:
        """Stage ``last.pt`` (written once the next loss is finite), or write it now (``final``).

        Raises:
            TrainingDiverged: the weights are not finite or exploded (nothing is staged).
        """
        self._check_weights(step, epoch)
        if self.info.is_main:
            buf = io.BytesIO()
            torch.save(self._state(epoch, step, batch_in_epoch), buf)
            self.pending = (step, buf.getvalue(), len(self.rows))
            if final:
                self._commit()
        barrier(self.info)

    def _commit(self) -> None:
        if self.pending is None:
            return
        step, data, n_rows = self.pending
        atomic_write(self.last_path, lambda f: f.write(data), fsync=True)
        write_rows(self.s.run_dir / "metrics.csv", self.rows[:n_rows])
        self.saved_step, self.pending = step, None
        if not self.config_written:  # config.yaml follows last.pt
            self._write_config()

    def _write_config(self) -> None:
        atomic_write_text(self.s.run_dir / "config.yaml", yaml_dump(self.s.config))
        self.config_written = True

    # ------------------------------------------------------------------ start
    def _resume(self) -> tuple[int, int, int]:
        ckpt = load_checkpoint(self.last_path, map_location=self.info.device)
        old = ckpt.get("config") or {}
        check_resume(old, self.s.config, self.s.resume_mutable)
        t = self.task
        check_same_model(ckpt.get("meta"), t.meta(), source=self.last_path)
        epoch, step, batch = restore_training(
            ckpt,
            model=t.model,
            optimizer=t.optimizer,
            scheduler=t.scheduler,
            scaler=self.amp.scaler,
            source=self.last_path,
        )
        changed = apply_changed_hparams(t.optimizer, t.scheduler, old, self.s)
        if changed:
            self.log(f"resume: {changed} applied")
        self.guard = DivergenceGuard.from_state(ckpt.get("guard"))
        self.best_metric = float(ckpt.get("best_metric", -math.inf))
        self.best_step = int(ckpt.get("best_step", -1))
        self.saved_step = step
        self.rows = read_rows(self.s.run_dir / "metrics.csv", step)
        self.log(f"resuming {self.last_path} at step {step} (epoch {epoch})")
        return epoch, step, batch

    def _start(self) -> tuple[int, int, int]:
        s = self.s
        check_run_folder(self.last_path, resume=s.resume)
        if self.info.is_main:
            s.run_dir.mkdir(parents=True, exist_ok=True)
            removed = remove_stale_temps(s.run_dir)
            if removed:
                self.log(f"removed {removed} unfinished temporary file(s) of an earlier run")
        for line in [*self.task.describe(self.amp), s.schedule()]:
            self.log(line)
        position = self._resume() if s.resume else (0, 0, 0)
        if self.info.is_main:
            if not s.resume:  # a resume rewrites it with its first checkpoint
                self._write_config()
            from torch.utils.tensorboard import SummaryWriter

            # a resume logs the steps after its checkpoint again: TensorBoard drops the old ones
            purge = position[1] + 1 if s.resume else None
            self.writer = SummaryWriter(log_dir=str(s.run_dir / "tb"), purge_step=purge)
        return position

    # ------------------------------------------------------------------ steps
    def _micro_batches(self, model: nn.Module, epoch: int, skip: int) -> Iterator[tuple]:
        """Yield ``(batch index, batches in epoch, summed loss)`` after every optimizer group."""
        acc = self.s.accumulation
        loader = self.task.batches(epoch)
        n = len(loader) if isinstance(loader, Sized) else 0
        total = 0.0
        for bi, batch in enumerate(loader):
            if bi < skip:
                continue
            g0 = (bi // acc) * acc
            group = min(acc, n - g0)
            sync = (bi + 1 - g0) == group
            ctx = (
                model.no_sync()
                if (self.info.distributed and not sync)
                else contextlib.nullcontext()
            )
            with ctx:
                loss = self.task.loss(model, batch, self.amp) / group
                if self.amp.scaler is not None:
                    self.amp.scaler.scale(loss).backward()
                else:
                    loss.backward()
            total += float(loss.detach())
            if sync:
                yield bi, n, total
                total = 0.0

    def _optimizer_step(self) -> None:
        opt, clip, scaler = self.task.optimizer, self.s.grad_clip, self.amp.scaler
        if scaler is not None:
            if clip:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(self.task.model.parameters(), clip)
            scaler.step(opt)
            scaler.update()
        else:
            if clip:
                torch.nn.utils.clip_grad_norm_(self.task.model.parameters(), clip)
            opt.step()
        opt.zero_grad(set_to_none=True)
        if self.task.scheduler is not None:
            self.task.scheduler.step()

    def _check_weights(self, step: int, epoch: int) -> None:
        """Raise :class:`TrainingDiverged` unless the weights pass the guard."""
        peak = weights_max(self.task.model)
        problem = self.guard.weight_problem(peak)
        if problem:
            raise self._stop(problem, step, epoch, finite=math.isfinite(peak))

    def _stop(self, problem: str, step: int, epoch: int, *, finite: bool) -> TrainingDiverged:
        kept = f"{self.last_path} (step {self.saved_step})" if self.saved_step >= 0 else None
        where = f"at step {step} (epoch {epoch})"
        return stop_error(problem, where, kept=kept, resume=self.s.resume_command(), finite=finite)

    def _after_step(self, step: int, epoch: int, loss: float, lr: float, start: float) -> None:
        row = {"step": step, "epoch": epoch, "loss": loss, "lr": lr}
        row.update(self.task.step_metrics())
        row["time_s"] = time.monotonic() - start
        self.rows.append(row)
        if self.writer is not None:
            self.writer.add_scalar("train/loss", loss, step)
            self.writer.add_scalar("train/lr", lr, step)

    def _validation_due(self, step: int, *, done: bool) -> bool:
        """Every ``val_every_steps`` optimizer steps, at the last step, and when the time budget
        ends the run (``done``), unless a signal is stopping it."""
        every = self.s.val_every_steps
        if not every:
            return False
        return step % every == 0 or step >= self.s.total_steps or (done and not self.signum)

    def validate(self, step: int, epoch: int, batch: int) -> None:
        """Validate on rank 0, log the metrics, write ``best.pt`` when the score improves."""
        self._check_weights(step, epoch)
        if self.info.is_main and self.task.has_validation:
            metrics = self.task.validate(self.amp)
            if self.rows and self.rows[-1]["step"] == step:
                self.rows[-1].update(metrics)
            else:
                self.rows.append({"step": step, **metrics})
            if self.writer is not None:
                for k, v in metrics.items():
                    if math.isfinite(v):
                        self.writer.add_scalar(f"val/{k}", v, step)
            summary = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
            self.log(f"step {step}: validation {summary}")
            score = metrics.get(self.task.score, float("nan"))
            if math.isfinite(score) and score > self.best_metric:
                self.best_metric, self.best_step = score, step
                save_checkpoint(self._state(epoch, step, batch), self.best_path)
        barrier(self.info)

    # ------------------------------------------------------------------ the loop
    def run(self) -> Path:
        """Train, checkpoint, validate; returns the run folder.

        Raises:
            NonFiniteLossError: NaN/Inf loss or weights (the last good checkpoint is kept).
            TrainingDiverged: the loss or the weights exploded (the last good one is kept).
            TrainingInterrupted: SIGINT/SIGTERM (a checkpoint of the current step is written).
        """
        epoch, step, skip = self._start()
        model: nn.Module = self.task.model
        if self.info.distributed:
            from torch.nn.parallel import DistributedDataParallel

            cuda = self.info.device.type == "cuda"
            model = DistributedDataParallel(
                model, device_ids=[self.info.local_rank] if cuda else None
            )
        if self.guard.weight_max0 is None:  # after DDP's broadcast: the same on every rank
            self.guard.weight_max0 = weights_max(self.task.model)
        bar = tqdm(
            total=self.s.total_steps,
            initial=step,
            desc="train",
            unit="step",
            disable=not (self.info.is_main and self.s.progress),
            dynamic_ncols=True,
        )
        model.train()
        try:
            with deferred_signals(lambda signum: setattr(self, "signum", signum)):
                epoch, step = self._epochs(model, bar, epoch, step, skip)
        finally:
            bar.close()
            if self.writer is not None:
                self.writer.close()
        if self.signum:
            name = signal.Signals(self.signum).name
            raise TrainingInterrupted(
                f"invseg: {name} at step {step}: checkpoint {self.last_path} written; continue "
                f"with `{self.s.resume_command()}`",
                self.signum,
            )
        if self.info.is_main:
            self.task.finish(self.rows, self.s.run_dir)
            best = (
                f"best {self.task.score} {self.best_metric:.4f} at step {self.best_step}"
                if self.best_step >= 0
                else "no validation"
            )
            self.log(f"done: {step} steps; {best}; run folder {self.s.run_dir}")
        barrier(self.info)
        return self.s.run_dir

    def _epochs(self, model: nn.Module, bar: Any, epoch: int, step: int, skip: int) -> tuple:
        s, start = self.s, time.monotonic()
        budget = s.max_minutes * 60 if s.max_minutes is not None else math.inf
        stop, mid = False, 0
        while step < s.total_steps and not stop:
            for bi, n, loss_sum in self._micro_batches(model, epoch, skip):
                flags = torch.tensor([loss_sum, float(self.signum > 0)], device=self.info.device)
                loss, interrupted = (float(v) for v in all_reduce_mean(flags, self.info))
                problem = self.guard.loss_problem(loss)
                if problem:
                    raise self._stop(problem, step + 1, epoch, finite=math.isfinite(loss))
                if self.info.is_main:
                    self._commit()  # the staged checkpoint is followed by a finite loss
                lr = self.task.optimizer.param_groups[0]["lr"]
                try:
                    self._optimizer_step()
                except RuntimeError as err:  # "value cannot be converted to ... overflow"
                    if "overflow" in str(err):
                        why = f"the optimizer step overflowed ({err}: train.lr or weight_decay)"
                        raise self._stop(why, step + 1, epoch, finite=False) from err
                    raise
                step += 1
                self._after_step(step, epoch, loss, lr, start)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", epoch=epoch)
                if interrupted > 0:
                    self.signum = self.signum or signal.SIGTERM
                done = step >= s.total_steps or time.monotonic() - start > budget
                if self._validation_due(step, done=done):
                    self.validate(step, epoch, bi + 1 if bi + 1 < n else 0)
                if done or self.signum:
                    stop, mid = True, (bi + 1 if bi + 1 < n else 0)
                    break
                if s.checkpoint_every and step % s.checkpoint_every == 0 and bi + 1 < n:
                    self.checkpoint(epoch, step, bi + 1, final=False)
            if mid:
                break
            epoch, skip = epoch + 1, 0
            self.checkpoint(epoch, step, 0, final=stop or step >= s.total_steps)
        if mid:
            self.checkpoint(epoch, step, mid, final=True)
        elif self.pending is not None and self.info.is_main:
            self._commit()
        return epoch, step
