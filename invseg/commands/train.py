r"""Train a segmentation network from a YAML config (one process, or many under torchrun).

The loss is

.. math::
    \mathcal{L} = w_\mathrm{dice}\,\mathrm{Dice}(\sigma(z), y)
      \;[+\; w_\mathrm{ce}\,\mathrm{CE}(z, y)]\;+\;w_\mathrm{vae}\,\mathcal{L}_\mathrm{VAE}

with a sigmoid :math:`\sigma` per region for BraTS-like conventions (``kind="regions"``) and a
softmax plus cross-entropy for class conventions (iSeg); :math:`\mathcal{L}_\mathrm{VAE}` is the
network's own ``vae_loss`` (weighted L2 + KL) when its VAE branch is on.

A run folder (``output.dir``) receives ``last.pt`` and ``best.pt`` (see
:mod:`invseg.runtime.checkpoint`), ``metrics.csv`` (one row per optimizer step, validation
columns on validation steps), ``config.yaml`` (the resolved config), ``tb/`` (TensorBoard) and
``curves.png``.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from invseg._choices import check_option, did_you_mean
from invseg.engine import activation_bytes
from invseg.runtime.checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from invseg.runtime.config import ConfigError, instantiate_model, load_config
from invseg.runtime.distributed import DistInfo, all_reduce_mean, barrier, cleanup, init_from_env
from invseg.runtime.files import atomic_write_text

__all__ = ["NonFiniteLossError", "train"]

_SCHEDULERS = ("cosine", "poly", "constant")
_OPTIMIZERS = ("adamw", "adam", "sgd")


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or Inf; the last good checkpoint is kept."""


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------
def _log(info: DistInfo, msg: str) -> None:
    if info.is_main:
        from tqdm import tqdm

        tqdm.write(msg)


def activation_memory(model: nn.Module, x: torch.Tensor, autocast: Any) -> int:
    """Activation bytes of one training forward of ``model`` on ``x`` (parameters excluded)."""
    with autocast():
        return int(activation_bytes(model, x))


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"


def _autocast_factory(device: torch.device, enabled: bool) -> tuple[Callable[[], Any], Any]:
    """(autocast context factory, GradScaler or None): bf16 on CPU, fp16 + scaler on CUDA."""
    if not enabled:
        return contextlib.nullcontext, None
    if device.type == "cuda":
        scaler = torch.amp.GradScaler("cuda")
        return (lambda: torch.autocast("cuda", dtype=torch.float16)), scaler
    return (lambda: torch.autocast("cpu", dtype=torch.bfloat16)), None


def _lr_lambda(kind: str, total: int, warmup: int) -> Callable[[int], float]:
    def fn(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        t = min(1.0, (step - warmup) / max(1, total - warmup))
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * t))
        if kind == "poly":
            return (1.0 - t) ** 0.9
        return 1.0

    return fn


def split_cases(
    cases: Sequence[Any], *, val_cases: Sequence[str] | None, val_fraction: float, seed: int
) -> tuple[list[Any], list[Any]]:
    """Split labelled cases into (train, validation), deterministically for a seed.

    Raises:
        ConfigError: unknown validation case id or nothing left to train on.

    Example:
        >>> from types import SimpleNamespace as C
        >>> tr, va = split_cases([C(case_id=str(i)) for i in range(5)], val_cases=["3"],
        ...                      val_fraction=0.2, seed=0)
        >>> [c.case_id for c in va], len(tr)
        (['3'], 4)
    """
    ids = [c.case_id for c in cases]
    if val_cases is not None:
        wanted = [str(v) for v in val_cases]
        for v in wanted:
            if v not in ids:
                raise ConfigError(
                    f"data.val_cases: no labelled case '{v}' in the dataset.{did_you_mean(v, ids)}"
                )
        val = [c for c in cases if c.case_id in wanted]
    else:
        if not 0.0 <= float(val_fraction) < 1.0:
            raise ConfigError(f"data.val_fraction={val_fraction} must be in [0, 1).")
        order = sorted(ids)
        random.Random(seed).shuffle(order)
        n_val = round(float(val_fraction) * len(order))
        if val_fraction > 0 and len(order) > 1:
            n_val = max(1, n_val)
        chosen = set(order[:n_val])
        val = [c for c in cases if c.case_id in chosen]
    train_ = [c for c in cases if c not in val]
    if not train_:
        raise ConfigError(
            "no training cases left after the validation split; lower "
            "data.val_fraction or shorten data.val_cases."
        )
    return train_, val


def _nanmean_rows(rows: list[torch.Tensor], n: int) -> np.ndarray:
    """Mean over cases of (1, n) metric rows, skipping NaN/Inf (empty region) entries."""
    if not rows:
        return np.full(n, np.nan)
    a = torch.cat([r.reshape(-1, n) for r in rows]).numpy().astype(np.float64)
    a[~np.isfinite(a)] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN column -> NaN
        return np.nanmean(a, axis=0)


# --------------------------------------------------------------------------------------------
# the trainer
# --------------------------------------------------------------------------------------------
class _Trainer:
    def __init__(self, cfg: dict[str, Any], info: DistInfo, resume: bool) -> None:
        from monai.utils import set_determinism

        self.cfg, self.info, self.resume = cfg, info, resume
        t = cfg["train"]
        self.seed = int(t["seed"])
        self.run_dir = Path(cfg["output"]["dir"]).expanduser()
        self.last_path = self.run_dir / "last.pt"
        self.best_path = self.run_dir / "best.pt"
        if not resume and self.last_path.exists():
            raise ConfigError(
                f"run folder '{self.run_dir}' already holds a checkpoint; pass "
                "--resume to continue it or choose another folder with "
                "--set output.dir=..."
            )
        if resume and not self.last_path.exists():
            raise ConfigError(
                f"--resume: no checkpoint '{self.last_path}' to resume from; "
                "start the run without --resume."
            )
        self.scheduler_kind = check_option(
            "train.scheduler", t["scheduler"], _SCHEDULERS, error=ConfigError
        )
        self.optimizer_kind = check_option(
            "train.optimizer", t["optimizer"], _OPTIMIZERS, error=ConfigError
        )
        self.accumulation = int(t["accumulation"])
        if self.accumulation < 1:
            raise ConfigError("train.accumulation must be >= 1.")
        set_determinism(seed=self.seed if t["deterministic"] else None)
        torch.manual_seed(self.seed)
        self._setup_data()
        self._setup_model()

    # ---------------------------------------------------------------- data
    def _setup_data(self) -> None:
        from invseg.data import (
            case_dicts,
            cases_from_paths,
            discover,
            eval_transforms,
            get_convention,
            train_transforms,
        )

        d = self.cfg["data"]
        if not d["root"]:
            raise ConfigError(
                "data.root is not set: point it at the dataset folder, e.g. "
                "--set data.root=/data/BraTS2020_TrainingData."
            )
        root = Path(d["root"]).expanduser()
        if d["layout"]:
            ds_info, cases = cases_from_paths([root], layout=d["layout"])
        else:
            ds_info = discover(root)
            cases = list(ds_info.cases)
        self.modalities = tuple(ds_info.modalities) if ds_info is not None else ()
        self.layout = ds_info.layout if ds_info is not None else str(d["layout"])
        if d["convention"]:
            self.convention = get_convention(d["convention"])
        elif ds_info is not None:
            self.convention = ds_info.convention
        else:
            raise ConfigError("data.convention is not set: use brats, brats2023, msd or iseg.")
        labelled = [c for c in cases if c.label is not None]
        if not labelled:
            raise ConfigError(f"{root}: no case has a label file; training needs labelled cases.")
        train_cases, val_cases = split_cases(
            labelled,
            val_cases=d["val_cases"],
            val_fraction=float(d["val_fraction"]),
            seed=self.seed,
        )
        self.train_cases, self.val_cases = train_cases, val_cases
        self.spacing = [float(s) for s in d["spacing"]]
        self.crop = [int(c) for c in d["crop"]]
        tr = train_transforms(
            self.convention,
            crop=self.crop,
            spacing=self.spacing,
            num_samples=int(d["num_samples"]),
            augment=bool(d["augment"]),
        )
        ev = eval_transforms(self.convention, spacing=self.spacing)
        self.train_ds = self._dataset(case_dicts(train_cases), tr, float(d["cache_rate"]))
        self.val_ds = (
            self._dataset(case_dicts(val_cases), ev, float(d["cache_rate"])) if val_cases else None
        )

    def _dataset(self, items: list[dict], transform: Any, cache_rate: float) -> Any:
        from monai.data import CacheDataset, Dataset

        if cache_rate > 0:
            return CacheDataset(
                items, transform, cache_rate=cache_rate, num_workers=0, progress=False
            )
        return Dataset(items, transform)

    def _loader(self, epoch: int) -> Any:
        from monai.data import DataLoader
        from torch.utils.data.distributed import DistributedSampler

        info = self.info
        sampler = DistributedSampler(
            self.train_ds,
            num_replicas=info.world_size,
            rank=info.rank,
            shuffle=True,
            seed=self.seed,
            drop_last=False,
        )
        sampler.set_epoch(epoch)
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch * 7919 + info.rank)
        return DataLoader(
            self.train_ds,
            batch_size=int(self.cfg["train"]["batch_size"]),
            sampler=sampler,
            num_workers=int(self.cfg["train"]["num_workers"]),
            generator=gen,
            pin_memory=info.device.type == "cuda",
        )

    # ---------------------------------------------------------------- model & optimisation
    def _setup_model(self) -> None:
        from monai.losses import DiceCELoss, DiceLoss

        t = self.cfg["train"]
        mcfg = dict(self.cfg["model"])
        self.model = instantiate_model(mcfg).to(self.info.device)
        in_ch = mcfg.get("in_channels")
        if self.modalities and in_ch is not None and int(in_ch) != len(self.modalities):
            raise ConfigError(
                f"model.in_channels={in_ch} but the dataset has "
                f"{len(self.modalities)} modalities ({', '.join(self.modalities)}); "
                f"set --set model.in_channels={len(self.modalities)}."
            )
        out_ch = mcfg.get("out_channels")
        if out_ch is not None and int(out_ch) != self.convention.out_channels:
            raise ConfigError(
                f"model.out_channels={out_ch} but convention "
                f"'{self.convention.name}' needs {self.convention.out_channels}."
            )
        w = t["loss"]
        self.w_vae = float(w.get("vae", 1.0))
        if self.convention.kind == "regions":
            self.loss_fn = DiceLoss(sigmoid=True, smooth_nr=0.0, smooth_dr=1e-5, squared_pred=True)
            self.loss_weight = float(w.get("dice", 1.0))
        else:
            self.loss_fn = DiceCELoss(
                to_onehot_y=True,
                softmax=True,
                lambda_dice=float(w.get("dice", 1.0)),
                lambda_ce=float(w.get("ce", 1.0)),
            )
            self.loss_weight = 1.0
        params = [p for p in self.model.parameters() if p.requires_grad]
        lr, wd = float(t["lr"]), float(t["weight_decay"])
        if self.optimizer_kind == "adamw":
            self.optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=wd)
        elif self.optimizer_kind == "adam":
            self.optimizer = torch.optim.Adam(params, lr=lr, weight_decay=wd)
        else:
            self.optimizer = torch.optim.SGD(
                params,
                lr=lr,
                weight_decay=wd,
                momentum=float(t["momentum"]),
                nesterov=float(t["momentum"]) > 0,
            )
        self.autocast, self.scaler = _autocast_factory(self.info.device, bool(t["amp"]))
        n_batches = math.ceil(len(self.train_ds) / self.info.world_size / int(t["batch_size"]))
        self.batches_per_epoch = n_batches
        self.steps_per_epoch = math.ceil(n_batches / self.accumulation)
        self.total_steps = (
            int(t["steps"]) if t["steps"] is not None else int(t["epochs"]) * self.steps_per_epoch
        )
        if self.total_steps < 1:
            raise ConfigError("train.steps / train.epochs must give at least one optimizer step.")
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            _lr_lambda(self.scheduler_kind, self.total_steps, int(t["warmup_steps"])),
        )

    def meta(self) -> dict[str, Any]:
        mcfg = dict(self.cfg["model"])
        target = mcfg.pop("_target_")
        i = self.cfg["infer"]
        import invseg

        return {
            "target": str(target),
            "kwargs": mcfg,
            "convention": self.convention.name,
            "modalities": list(self.modalities),
            "layout": self.layout,
            "spacing": list(self.spacing),
            "crop": list(self.crop),
            "roi_size": [int(r) for r in i["roi_size"]],
            "sw_batch_size": int(i["sw_batch_size"]),
            "overlap": float(i["overlap"]),
            "tta": bool(i["tta"]),
            "amp": bool(self.cfg["train"]["amp"]),
            "invseg_version": invseg.__version__,
        }

    # ---------------------------------------------------------------- checkpoints
    def _state(self, epoch: int, step: int, batch_in_epoch: int) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "epoch": epoch,
            "step": step,
            "batch_in_epoch": batch_in_epoch,
            "best_metric": self.best_metric,
            "best_step": self.best_step,
            "rng": capture_rng(),
            "config": self.cfg,
            "meta": self.meta(),
        }

    def _save(self, path: Path, epoch: int, step: int, batch_in_epoch: int) -> None:
        if self.info.is_main:
            save_checkpoint(self._state(epoch, step, batch_in_epoch), path)
            self._write_rows(self.rows)  # the CSV always matches the last checkpoint
        self._last_saved_step = step
        barrier(self.info)

    # ---------------------------------------------------------------- validation
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        from monai.inferers import sliding_window_inference
        from monai.metrics import DiceMetric, HausdorffDistanceMetric
        from monai.networks.utils import one_hot

        conv = self.convention
        regions = conv.kind == "regions"
        names = list(conv.names) if regions else list(conv.names)[1:]
        dice = DiceMetric(include_background=regions, reduction="none", ignore_empty=True)
        hd95 = HausdorffDistanceMetric(include_background=regions, percentile=95, reduction="none")
        i = self.cfg["infer"]
        dice_rows: list[torch.Tensor] = []
        hd_rows: list[torch.Tensor] = []
        self.model.eval()
        try:
            for item in self.val_ds:
                image = torch.as_tensor(item["image"])[None].to(self.info.device)
                label = torch.as_tensor(item["label"])[None].to(self.info.device)
                with self.autocast():
                    logits = sliding_window_inference(
                        image,
                        roi_size=[int(r) for r in i["roi_size"]],
                        sw_batch_size=int(i["sw_batch_size"]),
                        predictor=self.model,
                        overlap=float(i["overlap"]),
                    )
                logits = torch.as_tensor(logits).float()
                if regions:
                    pred = (torch.sigmoid(logits) > 0.5).float()
                    ref = label.float()
                else:
                    n = conv.out_channels
                    pred = one_hot(logits.argmax(1, keepdim=True), num_classes=n)
                    ref = one_hot(label.long(), num_classes=n)
                dice_rows.append(dice(y_pred=pred, y=ref).cpu().float())
                with warnings.catch_warnings():
                    # empty prediction/reference: HD95 is NaN (UserWarning); MONAI 1.5+ calls
                    # its own deprecated get_mask_edges argument (FutureWarning).
                    warnings.simplefilter("ignore", UserWarning)
                    warnings.filterwarnings("ignore", "always_return_as_numpy", FutureWarning)
                    warnings.filterwarnings("ignore", ".*always_return_as_numpy", FutureWarning)
                    hd_rows.append(hd95(y_pred=pred, y=ref).cpu().float())
            # Per-case values straight from the metric calls: aggregate() would all-gather
            # across ranks, but only rank 0 validates.
            d = _nanmean_rows(dice_rows, len(names))
            h = _nanmean_rows(hd_rows, len(names))
        finally:
            self.model.train()
        out: dict[str, float] = {}
        for k, name in enumerate(names):
            out[f"dice_{name}"] = float(d[k])
            out[f"hd95_{name}"] = float(h[k])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            out["dice_mean"] = float(np.nanmean(d)) if np.isfinite(d).any() else float("nan")
        return out

    # ---------------------------------------------------------------- the loop
    def compute_loss(
        self, model: nn.Module, image: torch.Tensor, target: torch.Tensor
    ) -> torch.Tensor:
        with self.autocast():
            logits = model(image)
        loss = self.loss_weight * self.loss_fn(logits.float(), target)
        vae = getattr(self.model, "vae_loss", None)
        if vae is not None and self.w_vae:
            loss = loss + self.w_vae * vae.float()
        return loss

    def run(self) -> Path:
        from tqdm import tqdm

        info, t = self.info, self.cfg["train"]
        self.best_metric, self.best_step = -math.inf, -1
        epoch, step, skip = 0, 0, 0
        rows: list[dict[str, Any]] = []
        self.rows = rows
        if info.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        n_params = sum(p.numel() for p in self.model.parameters())
        _log(
            info,
            f"model {self.cfg['model']['_target_']}: {n_params / 1e6:.3f} M parameters; "
            f"{len(self.train_cases)} training / {len(self.val_cases)} validation cases; "
            f"{self.total_steps} optimizer steps on {info.device} x {info.world_size}",
        )
        if t["measure_memory"] and info.is_main:
            x = torch.zeros(
                int(t["batch_size"]),
                len(self.modalities) or int(self.cfg["model"].get("in_channels", 1)),
                *self.crop,
                device=info.device,
            )
            nbytes = activation_memory(self.model, x, self.autocast)
            self.model.zero_grad(set_to_none=True)
            _log(
                info,
                f"activation memory per training step (crop {'x'.join(map(str, self.crop))}"
                f", batch {int(t['batch_size'])}, amp={bool(t['amp'])}): {_fmt_bytes(nbytes)}",
            )
        if self.resume:
            ckpt = load_checkpoint(self.last_path, map_location=info.device)
            self.model.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
            if self.scaler is not None and ckpt.get("scaler"):
                self.scaler.load_state_dict(ckpt["scaler"])
            epoch, step, skip = int(ckpt["epoch"]), int(ckpt["step"]), int(ckpt["batch_in_epoch"])
            self.best_metric = float(ckpt["best_metric"])
            self.best_step = int(ckpt["best_step"])
            restore_rng(ckpt["rng"])
            self._last_saved_step = step
            rows = self.rows = self._read_rows(step)
            _log(info, f"resuming {self.last_path} at step {step} (epoch {epoch})")
        else:
            self.best_metric = -math.inf
        if info.is_main:
            import yaml

            atomic_write_text(
                self.run_dir / "config.yaml", yaml.safe_dump(self.cfg, sort_keys=False)
            )
        model: nn.Module = self.model
        if info.distributed:
            from torch.nn.parallel import DistributedDataParallel

            model = DistributedDataParallel(
                self.model, device_ids=[info.local_rank] if info.device.type == "cuda" else None
            )
        writer = self._writer()
        bar = tqdm(
            total=self.total_steps,
            initial=step,
            desc="train",
            unit="step",
            disable=not (info.is_main and t["progress"]),
            dynamic_ncols=True,
        )
        start = time.monotonic()
        budget = float(t["max_minutes"]) * 60 if t["max_minutes"] is not None else math.inf
        ckpt_every = int(t["checkpoint_every"]) if t["checkpoint_every"] else 0
        val_every = max(1, int(t["val_every"]))
        last_val_step = -1
        stop = False
        mid = 0  # micro-batches consumed in an epoch left unfinished
        model.train()
        try:
            while step < self.total_steps and not stop:
                loader = self._loader(epoch)
                n = len(loader)
                acc_loss, group_done = 0.0, 0
                for bi, batch in enumerate(loader):
                    if bi < skip:
                        continue
                    g0 = (bi // self.accumulation) * self.accumulation
                    group = min(self.accumulation, n - g0)
                    image = batch["image"].to(info.device, non_blocking=True)
                    target = batch["label"].to(info.device, non_blocking=True)
                    sync = (bi + 1 - g0) == group
                    ctx = (
                        model.no_sync()
                        if (info.distributed and not sync)
                        else contextlib.nullcontext()
                    )
                    with ctx:
                        loss = self.compute_loss(model, image, target) / group
                        if self.scaler is not None:
                            self.scaler.scale(loss).backward()
                        else:
                            loss.backward()
                    acc_loss += float(loss.detach())
                    group_done += 1
                    if not sync:
                        continue
                    mean_loss = float(
                        all_reduce_mean(torch.tensor(acc_loss, device=info.device), info)
                    )
                    if not math.isfinite(mean_loss):
                        kept = (
                            f"the last good checkpoint {self.last_path} (step "
                            f"{self._last_saved_step}) is kept"
                            if self._last_saved_step >= 0
                            else "no checkpoint had been written yet"
                        )
                        raise NonFiniteLossError(
                            f"training stopped: loss is {mean_loss} at step {step + 1} (epoch "
                            f"{epoch}); {kept}. Lower train.lr, set train.amp=false or check the "
                            "input data for NaN voxels, then continue with --resume."
                        )
                    self._optimizer_step()
                    step += 1
                    lr = self.optimizer.param_groups[0]["lr"]
                    self.scheduler.step()
                    row = {
                        "step": step,
                        "epoch": epoch,
                        "loss": mean_loss,
                        "lr": lr,
                        "time_s": time.monotonic() - start,
                    }
                    rows.append(row)
                    if writer is not None:
                        writer.add_scalar("train/loss", mean_loss, step)
                        writer.add_scalar("train/lr", lr, step)
                    bar.update(1)
                    bar.set_postfix(loss=f"{mean_loss:.4f}", epoch=epoch)
                    acc_loss, group_done = 0.0, 0
                    out_of_time = time.monotonic() - start > budget
                    if step >= self.total_steps or out_of_time:
                        stop = True
                        mid = bi + 1 if bi + 1 < n else 0
                        break
                    if ckpt_every and step % ckpt_every == 0 and bi + 1 < n:
                        self._save(self.last_path, epoch, step, bi + 1)
                if mid:
                    break
                epoch += 1
                skip = 0
                if self.val_ds is not None and (epoch % val_every == 0 or stop):
                    self._validate_and_log(rows, epoch, step, 0, writer)
                    last_val_step = step
                self._save(self.last_path, epoch, step, 0)
            if mid:
                if self.val_ds is not None and last_val_step != step:
                    self._validate_and_log(rows, epoch, step, mid, writer)
                self._save(self.last_path, epoch, step, mid)
        finally:
            bar.close()
            if writer is not None:
                writer.close()
        if info.is_main:
            self._write_rows(rows)
            self._plot(rows)
            best = (
                f"best mean Dice {self.best_metric:.4f} at step {self.best_step}"
                if self.best_step >= 0
                else "no validation cases"
            )
            _log(info, f"done: {step} steps; {best}; run folder {self.run_dir}")
        barrier(info)
        return self.run_dir

    _last_saved_step = -1

    def _optimizer_step(self) -> None:
        clip = self.cfg["train"]["grad_clip"]
        if self.scaler is not None:
            if clip:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), float(clip))
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            if clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), float(clip))
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _validate_and_log(
        self, rows: list[dict[str, Any]], epoch: int, step: int, batch: int, writer: Any
    ) -> None:
        if self.info.is_main:
            metrics = self.validate()
            if rows and rows[-1]["step"] == step:
                rows[-1].update(metrics)
            else:
                rows.append({"step": step, **metrics})
            if writer is not None:
                for k, v in metrics.items():
                    if math.isfinite(v):
                        writer.add_scalar(f"val/{k}", v, step)
            summary = ", ".join(
                f"{k[5:]} {v:.3f}" for k, v in metrics.items() if k.startswith("dice_")
            )
            _log(self.info, f"step {step}: validation Dice {summary}")
            score = metrics.get("dice_mean", float("nan"))
            if math.isfinite(score) and score > self.best_metric:
                self.best_metric, self.best_step = score, step
                save_checkpoint(self._state(epoch, step, batch), self.best_path)
        barrier(self.info)

    def _writer(self) -> Any:
        if not self.info.is_main:
            return None
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(log_dir=str(self.run_dir / "tb"))

    def _read_rows(self, step: int) -> list[dict[str, Any]]:
        path = self.run_dir / "metrics.csv"
        if not path.exists():
            return []
        import pandas as pd

        df = pd.read_csv(path)
        df = df[df["step"] <= step]
        return [
            {k: v for k, v in r.items() if not (isinstance(v, float) and math.isnan(v))}
            for r in df.to_dict("records")
        ]

    def _write_rows(self, rows: list[dict[str, Any]]) -> None:
        import pandas as pd

        atomic_write_text(self.run_dir / "metrics.csv", pd.DataFrame(rows).to_csv(index=False))

    def _plot(self, rows: list[dict[str, Any]]) -> None:
        import pandas as pd

        from invseg.runtime.plots import plot_curves

        if rows:
            plot_curves(pd.DataFrame(rows), self.run_dir / "curves.png")


def train(
    config: str | Path | dict[str, Any], *, overrides: Sequence[str] = (), resume: bool = False
) -> Path:
    """Train a segmentation network described by a YAML config.

    Under ``torchrun --nproc_per_node N`` every process calls this; they join one process group
    (gloo on CPU, nccl on CUDA), each reads its own shard of every epoch
    (:class:`~torch.utils.data.distributed.DistributedSampler`) and only rank 0 writes files.

    Args:
        config: YAML file (or an already-loaded dict) with sections data/model/train/infer/output.
        overrides: ``key=value`` strings with dotted keys, e.g. ``["train.lr=3e-4"]``.
        resume: continue from ``<output.dir>/last.pt`` (model, optimizer, scheduler, scaler, RNG
            states and data position are restored).

    Returns:
        The run folder.

    Raises:
        ConfigError: bad config, unknown key, existing run without ``resume``.
        NonFiniteLossError: the loss became NaN/Inf (the last good checkpoint is kept).
        invseg.data.DataError: unreadable or inconsistent data.

    Example:
        >>> from invseg.commands.train import split_cases  # full runs: see tests/commands
    """
    cfg = load_config(config, overrides)
    info = init_from_env(cfg["train"]["device"])
    try:
        trainer = _Trainer(cfg, info, resume)
        return trainer.run()
    finally:
        cleanup(info)
