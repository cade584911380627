"""Lazy, side-effect-free import of memcnn (the coupling reference and benchmark baseline)."""

from __future__ import annotations

import importlib
import warnings
from types import ModuleType


def import_memcnn() -> ModuleType:
    """Import memcnn without letting it change the process's warning filters.

    ``import memcnn`` installs ``warnings.filterwarnings('ignore', UserWarning)`` for the
    whole process and emits FutureWarnings for deprecated torch decorators; both are
    confined here.

    Raises:
        ImportError: with an install hint if memcnn is missing.
    """
    with warnings.catch_warnings():  # restores warnings.filters on exit
        warnings.simplefilter("ignore")
        try:
            return importlib.import_module("memcnn")
        except ImportError as err:  # pragma: no cover - memcnn is a dependency
            raise ImportError("memcnn is required for this comparison: pip install memcnn") from err
