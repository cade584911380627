"""MONAI dataset builder."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from invseg.data.case import Case, case_dicts

__all__ = ["make_dataset"]


def make_dataset(
    cases: Sequence[Case] | Sequence[dict[str, Any]],
    transforms: Callable | None,
    *,
    cache_rate: float = 1.0,
    num_workers: int = 0,
):
    """A MONAI ``CacheDataset`` over cases (the deterministic head of the chain is cached).

    Args:
        cases: :class:`Case` objects or ready data dictionaries (:func:`case_dicts`).
        transforms: the chain, e.g. :func:`train_transforms`.
        cache_rate: fraction of the cases to cache in memory (0 disables caching).
        num_workers: threads used to fill the cache.

    Example:
        >>> import tempfile
        >>> from invseg.data import synthesize, eval_transforms
        >>> info = synthesize("iseg", tempfile.mkdtemp(), cases=2, shape=(16, 16, 16))
        >>> ds = make_dataset(info.cases, eval_transforms("iseg"))
        >>> len(ds), tuple(ds[0]["image"].shape)
        (2, (2, 16, 16, 16))
    """
    from monai.data import CacheDataset

    if not 0.0 <= float(cache_rate) <= 1.0:
        raise ValueError(f"cache_rate must lie in [0, 1], got {cache_rate}")
    data = [c if isinstance(c, dict) else case_dicts([c])[0] for c in cases]
    return CacheDataset(
        data=data,
        transform=transforms,
        cache_rate=float(cache_rate),
        num_workers=int(num_workers),
        progress=False,
    )
