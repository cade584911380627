"""Imports flow one way (STYLE.md): every ``invseg`` import, lazy ones included, goes down a layer.

The layers, lowest first: the package root's leaf modules (``invseg/files.py``,
``invseg/_choices.py``), ``engine``, then ``nets``, ``recon`` and ``data`` (peers: none imports
another), ``runtime`` (knows no task), ``tasks``, ``commands``, ``bench`` (its rows train
through ``commands``), ``cli``. A module may import its own package and any lower layer.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import invseg

PACKAGE = Path(invseg.__file__).resolve().parent

#: Rank of each top-level part of ``invseg``; an import must go to a strictly lower rank.
LAYERS = {
    "invseg": 0,  # the root package: ``__version__`` only
    "_choices": 0,
    "files": 0,
    "engine": 1,
    "nets": 2,
    "recon": 2,
    "data": 2,
    "runtime": 3,
    "tasks": 4,
    "nnunet": 4,  # nets as nnU-Net architectures, the plans of ``invseg nnunet plans``
    "commands": 5,
    "bench": 6,
    "cli": 7,
    "__main__": 8,
}


def _part(module: str) -> str:
    """``invseg.nets.fully`` -> ``nets``; ``invseg`` -> ``invseg``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "invseg"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every ``invseg`` import in a file, relative ones resolved."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            out.append((node.lineno, name))
    return [(line, name) for line, name in out if name.split(".")[0] == "invseg"]


def _violations() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        own = _part(_module_name(path))
        for line, name in _imports(path):
            target = _part(name)
            if target == own:
                continue
            if own not in LAYERS or target not in LAYERS:
                found.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {name} (no layer)")
            elif LAYERS[target] >= LAYERS[own]:
                found.append(f"{path.relative_to(PACKAGE.parent)}:{line}: imports {name}")
    return found


def test_every_import_goes_to_a_lower_layer() -> None:
    assert _violations() == []


@pytest.mark.parametrize("low", ["engine", "nets", "recon", "data", "runtime", "tasks"])
def test_library_layers_import_no_bench_commands_or_cli(low: str) -> None:
    bad = [
        f"{path.name}:{line}: {name}"
        for path in sorted((PACKAGE / low).rglob("*.py"))
        for line, name in _imports(path)
        if _part(name) in ("bench", "commands", "cli")
    ]
    assert bad == []


def test_the_check_sees_lazy_relative_and_upward_imports(tmp_path: Path, monkeypatch) -> None:
    fake = tmp_path / "invseg"
    (fake / "data").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "data" / "__init__.py").write_text("from .io import x\n")
    (fake / "data" / "io.py").write_text(
        "def f():\n    from invseg.runtime.files import atomic_path\n    from ..bench import q\n"
    )
    monkeypatch.setattr(f"{__name__}.PACKAGE", fake)
    assert [name for _, name in _imports(fake / "data" / "__init__.py")] == ["invseg.data.io"]
    assert _violations() == [
        "invseg/data/io.py:2: imports invseg.runtime.files",
        "invseg/data/io.py:3: imports invseg.bench",
    ]
