"""The validation split has its own seed and is named in the log."""

from __future__ import annotations

import torch

from invseg.runtime.device import Amp
from invseg.runtime.distributed import DistInfo
from invseg.tasks.config import load_config
from invseg.tasks.seg import SegTask, split_cases
from tests.conftest import tiny_config


def test_train_seed_does_not_move_the_validation_split(brats_tiny, tmp_path) -> None:
    tasks = []
    for seed in (0, 1, 2):
        cfg = tiny_config(brats_tiny.root, tmp_path / f"run{seed}", measure_memory=False, seed=seed)
        info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
        tasks.append(SegTask(load_config(cfg), info))
    ids = [[c.case_id for c in t.data.val_cases] for t in tasks]
    assert ids[0] == ids[1] == ids[2] and len(ids[0]) == 1


def test_split_seed_chooses_the_validation_cases_and_the_log_names_them(brats_tiny, tmp_path):
    cases = list(brats_tiny.cases)
    by_seed = {
        s: split_cases(cases, val_cases=None, val_fraction=0.25, seed=s)[1] for s in range(8)
    }
    seed = next(s for s in by_seed if by_seed[s] != by_seed[0])  # a seed that picks another case
    cfg = tiny_config(brats_tiny.root, tmp_path / "run", measure_memory=False)
    cfg["data"]["split_seed"] = seed
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    task = SegTask(load_config(cfg), info)
    chosen = [c.case_id for c in task.data.val_cases]
    assert chosen == [c.case_id for c in by_seed[seed]] != [c.case_id for c in by_seed[0]]
    lines = task.describe(Amp(torch.device("cpu"), False))
    assert f"validation cases: {chosen[0]}" in lines
