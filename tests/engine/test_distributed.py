from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from .conftest import make_chain

BATCH = torch.Generator().manual_seed(7)
X = torch.randn(4, 4, 4, 4, 4, generator=BATCH)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return make_chain(3).double()


def _loss(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x).square().mean()


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model = DistributedDataParallel(_model())
        shard = X.double().chunk(world)[rank]
        _loss(model, shard).backward()
        grads = {n: p.grad for n, p in model.module.named_parameters()}
        torch.save(grads, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_on_two_gloo_processes_matches_one_process(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    model = _model()
    _loss(model, X.double()).backward()
    for rank in range(2):
        grads = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert grads.keys() == dict(model.named_parameters()).keys()
        for name, p in model.named_parameters():
            torch.testing.assert_close(grads[name], p.grad, rtol=1e-10, atol=1e-12)
