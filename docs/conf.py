"""Sphinx configuration of the invseg documentation (built with `make docs`)."""

from __future__ import annotations

from pathlib import Path

import invseg

project = "invseg"
author = "invseg developers"
release = invseg.__version__
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "sphinx.ext.mathjax",
]
autodoc_member_order = "bysource"
autodoc_typehints = "none"  # the Google-style Args sections describe the types
napoleon_google_docstring = True
napoleon_numpy_docstring = False
exclude_patterns = ["_build", "figures/README*"]
html_theme = "alabaster"
html_static_path: list[str] = []
suppress_warnings = ["ref.python"]  # re-exported names resolve to two paths

_HERE = Path(__file__).resolve().parent


def _bench_images(app, docname: str, source: list[str]) -> None:
    """Show every plot ``invseg bench`` wrote to docs/img/ on the benchmarks page."""
    if docname != "benchmarks":
        return
    images = sorted((_HERE / "img").glob("*.png"))
    block = (
        "".join(
            f"\n.. figure:: img/{p.name}\n   :width: 560\n\n   ``docs/img/{p.name}``\n"
            for p in images
        )
        or "\n*No plots yet: run* ``make bench``.\n"
    )
    source[0] = source[0].replace("Tables\n------", block + "\nTables\n------", 1)
    if not (_HERE / "benchmarks.md").is_file():
        source[0] = source[0].replace(
            ".. literalinclude:: benchmarks.md\n   :language: markdown",
            "*No tables yet: run* ``make bench``.",
        )


def setup(app) -> dict:
    app.connect("source-read", _bench_images)
    return {"parallel_read_safe": True}
