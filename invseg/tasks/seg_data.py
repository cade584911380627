"""Segmentation data for training: cases, split, MONAI datasets, loaders, validation metrics."""

from __future__ import annotations

import contextlib
import threading
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from invseg.runtime.config import ConfigError
from invseg.runtime.device import Amp
from invseg.runtime.distributed import DistInfo
from invseg.tasks.config import SegConfig

__all__ = ["SegData", "plan_crop", "validation_metrics"]


def _resampled_side(case: Any, spacing: list[float]) -> int:
    """Longest side, in voxels at ``spacing``, of a case's first image (header only)."""
    import nibabel as nib

    img = nib.load(str(case.images[0]))
    zooms = img.header.get_zooms()[:3]
    return max(round(n * z / s) for n, z, s in zip(img.shape[:3], zooms, spacing))


def plan_crop(cfg: SegConfig, info: DistInfo, modalities: int) -> list[int]:
    """``data.crop: auto``: the largest cube whose training step fits ``train.memory_budget``.

    The network of ``model`` is measured by :func:`invseg.runtime.planner.plan_model` at the
    configured batch size and precision on this process's device.

    Raises:
        ConfigError: no budget given, or not even the smallest cube fits.
    """
    from invseg.nets.vae import vae_kwargs
    from invseg.runtime.config import instantiate_model
    from invseg.runtime.planner import parse_bytes, plan_model

    t = cfg.train
    if not t.memory_budget:
        raise ConfigError(
            "data.crop: 'auto' needs train.memory_budget (e.g. --set train.memory_budget=12GB), "
            "or give the crop as a list of 3 integers."
        )
    try:
        budget = parse_bytes(t.memory_budget)
    except ValueError as err:
        raise ConfigError(
            f"train.memory_budget: {t.memory_budget!r} is not a size like 12GB"
        ) from err
    model = dict(cfg.model)

    def build(size: int) -> torch.nn.Module:
        return instantiate_model(vae_kwargs(model, [size] * 3))

    amp = None if not t.amp else ("fp16" if info.device.type == "cuda" else "bf16")
    channels = modalities or int(model.get("in_channels", 1))
    plan = plan_model(
        build, channels, budget_bytes=budget, batch=t.batch_size, amp=amp, device=info.device
    )
    if plan.max_cube is None:
        raise ConfigError(
            f"train.memory_budget: {t.memory_budget} is too small for one "
            f"{plan.multiple}^3 crop at batch {t.batch_size} (needs {plan.total_bytes} bytes)"
        )
    return [int(plan.max_cube)] * 3


class SegData:
    """The labelled cases of ``data.root``, checked, split and wrapped in MONAI datasets.

    Every training and validation case is read once here, before any dataset, loader or run
    folder exists (:func:`invseg.data.check_cases`: files read fully, modality shapes and affines
    compared, 3-D images, label values of the convention, finite voxels), so broken data stops
    the run with one line naming the file.

    Args:
        cfg: the resolved config.
        info: rank and device.
        split: ``split_cases(cases, val_cases=, val_fraction=, seed=)``.

    Raises:
        ConfigError: no ``data.root``, no convention, no labelled case, a bad split.
        invseg.data.DataError: ``"<file>: <problem>"`` for the first broken case.
    """

    def __init__(self, cfg: SegConfig, info: DistInfo, split: Callable[..., Any]) -> None:
        from invseg.data import (
            case_dicts,
            cases_from_paths,
            check_cases,
            discover,
            eval_transforms,
            get_convention,
            train_transforms,
        )

        d, self.cfg, self.info = cfg.data, cfg, info
        if not d.root:
            raise ConfigError(
                "data.root is not set: point it at the dataset folder, e.g. "
                "--set data.root=/data/BraTS2020_TrainingData."
            )
        root = Path(d.root).expanduser()
        if d.layout:
            ds_info, cases = cases_from_paths([root], layout=d.layout)
        else:
            ds_info = discover(root)
            cases = list(ds_info.cases)
        self.modalities = tuple(ds_info.modalities) if ds_info is not None else ()
        self.layout = ds_info.layout if ds_info is not None else str(d.layout)
        if d.convention:
            self.convention = get_convention(d.convention)
        elif ds_info is not None:
            self.convention = ds_info.convention
        else:
            raise ConfigError("data.convention is not set: use brats, brats2023, msd or iseg.")
        labelled = [c for c in cases if c.label is not None]
        if not labelled:
            raise ConfigError(f"{root}: no case has a label file; training needs labelled cases.")
        self.train_cases, self.val_cases = split(
            labelled, val_cases=d.val_cases, val_fraction=d.val_fraction, seed=d.split_seed
        )
        in_channels = cfg.model.get("in_channels") or len(self.modalities) or None
        check_cases(
            [*self.train_cases, *self.val_cases],
            in_channels=None if in_channels is None else int(in_channels),
            convention=self.convention,
        )
        self.cases = {c.case_id: c for c in labelled}
        self.spacing = list(d.spacing)
        if d.crop == "auto":  # no larger than the largest (resampled) training volume
            side = max(_resampled_side(c, self.spacing) for c in self.train_cases[:1])
            cube = plan_crop(cfg, info, len(self.modalities))[0]
            self.crop = [min(cube, -(-side // 8) * 8)] * 3
        else:
            self.crop = list(d.crop)
        tr = train_transforms(
            self.convention,
            crop=self.crop,
            spacing=self.spacing,
            num_samples=d.num_samples,
            augment=d.augment,
        )
        ev = eval_transforms(self.convention, spacing=self.spacing)
        self.train_ds = self._dataset(case_dicts(self.train_cases), tr)
        self.val_ds = self._dataset(case_dicts(self.val_cases), ev) if self.val_cases else None

    def _dataset(self, items: list[dict], transform: Any) -> Any:
        from monai.data import CacheDataset, Dataset

        rate = self.cfg.data.cache_rate
        if rate > 0:
            with _threads_joined_on_error():
                return CacheDataset(
                    items, transform, cache_rate=rate, num_workers=0, progress=False
                )
        return Dataset(items, transform)

    def loader(self, epoch: int, num_workers: int) -> Any:
        """The training batches of ``epoch`` (this rank's shard, seeded by seed, epoch, rank).

        A DataLoader with a length, whose workers stop as soon as a batch fails.
        """
        from monai.data import DataLoader
        from torch.utils.data.distributed import DistributedSampler

        info, seed = self.info, self.cfg.train.seed
        sampler = DistributedSampler(
            self.train_ds,
            num_replicas=info.world_size,
            rank=info.rank,
            shuffle=True,
            seed=seed,
            drop_last=False,
        )
        sampler.set_epoch(epoch)
        gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch * 7919 + info.rank)
        loader = DataLoader(
            self.train_ds,
            batch_size=self.cfg.train.batch_size,
            sampler=sampler,
            num_workers=num_workers,
            generator=gen,
            pin_memory=info.device.type == "cuda",
        )
        return _Batches(loader)

    def raise_non_finite(self, batch: dict[str, Any]) -> None:
        """Raise a :class:`~invseg.data.DataError` naming the modality files with NaN/Inf.

        A channel of a batch item is traced back to its file through the item's ``case_id``:
        channel ``c`` of a case with one file per modality is ``case.images[c]``; a case with a
        single (4-D) file names that file.
        """
        from invseg.data import DataError

        files: list[str] = []
        for k, channel in _non_finite_channels(batch["image"]):
            path = self._channel_file(batch, k, channel)
            if path not in files:
                files.append(path)
        raise DataError(
            f"{', '.join(files) or '?'}: non-finite (NaN/Inf) voxel in the training input; "
            "fix or remove that case."
        )

    def _channel_file(self, batch: dict[str, Any], k: int, channel: int) -> str:
        ids = batch.get("case_id")
        case_id = ids[k] if isinstance(ids, (list, tuple)) and len(ids) > k else ids
        case = self.cases.get(str(case_id)) if case_id is not None else None
        if case is not None:
            images = case.images
            return str(images[channel] if len(images) > 1 and channel < len(images) else images[0])
        names = (getattr(batch["image"], "meta", {}) or {}).get("filename_or_obj")
        return str(names[k] if isinstance(names, (list, tuple)) and len(names) > k else names)


def _non_finite_channels(image: torch.Tensor) -> list[tuple[int, int]]:
    """``(batch item, channel)`` pairs of a ``(B, C, ...)`` tensor that hold NaN/Inf."""
    finite = torch.isfinite(torch.as_tensor(image)).flatten(2).all(-1)  # (B, C)
    return [(int(k), int(c)) for k, c in (~finite).nonzero().tolist()]


class _Batches:
    """A DataLoader whose workers stop when an iteration fails, not at garbage collection.

    A worker's error is re-raised by torch from frames that hold the loader's iterator in a
    reference cycle, so its worker processes (and, on CUDA, its pin-memory thread) would live
    on until the cycle collector or interpreter exit; clearing those frames drops the iterator
    at once, and its ``__del__`` joins them.
    """

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        it = iter(self.loader)
        try:
            yield from it
        except BaseException as exc:
            traceback.clear_frames(exc.__traceback__)
            raise
        finally:
            del it


@contextlib.contextmanager
def _threads_joined_on_error(timeout: float = 60.0) -> Iterator[None]:
    """On an exception, join the threads started in the block before it propagates.

    MONAI's ``CacheDataset`` fills its cache in a ``ThreadPool`` whose ``terminate`` (on an
    error) does not wait for the task a worker thread is running; that daemon thread, still in
    torch code at interpreter exit, aborted the process ("terminate called without an active
    exception", exit status 134) instead of the one-line error and status 2.
    """
    before = set(threading.enumerate())
    try:
        yield
    except BaseException:
        me = threading.current_thread()
        for thread in threading.enumerate():
            if thread not in before and thread is not me:
                thread.join(timeout)
        raise


def validation_metrics(
    model: torch.nn.Module,
    data: SegData,
    amp: Amp,
    *,
    roi_size: list[int],
    sw_batch_size: int,
    overlap: float,
) -> dict[str, float]:
    """Per-region mean Dice and HD95 (mm at ``data.spacing``) over the validation cases.

    Each case is scored by :func:`invseg.tasks.seg_metrics.score_case` (BraTS rules for empty
    masks, as ``invseg evaluate``), so every value is finite and each mean is over all cases.
    ``dice_mean``, the model-selection score, is the mean of the per-region Dice means.
    """
    from monai.inferers import sliding_window_inference

    from invseg.tasks.seg_metrics import logit_masks, region_names, score_case, target_masks

    conv, device = data.convention, data.info.device
    names = region_names(conv)
    rows: list[dict[str, float]] = []
    for item in data.val_ds:
        image = torch.as_tensor(item["image"])[None].to(device)
        with amp():
            logits = sliding_window_inference(
                image,
                roi_size=roi_size,
                sw_batch_size=sw_batch_size,
                predictor=model,
                overlap=overlap,
            )
        pred = logit_masks(torch.as_tensor(logits)[0], conv)
        ref = target_masks(torch.as_tensor(item["label"]).to(device), conv)
        rows.append(score_case(pred, ref, names, spacing=data.spacing))
    keys = [f"{m}_{n}" for n in names for m in ("dice", "hd95")]
    out = {k: float(np.mean([r[k] for r in rows])) if rows else float("nan") for k in keys}
    out["dice_mean"] = float(np.mean([out[f"dice_{n}"] for n in names]))
    return out
