"""The documentation site builds with warnings as errors (the same command as `make docs`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_sphinx_builds_without_warnings(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",
            "--keep-going",
            "-q",
            "-b",
            "html",
            str(DOCS),
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    api = (tmp_path / "api.html").read_text()
    for name in (
        "InvertibleSequential",
        "PartiallyInvResUNet",
        "MoDL",
        "ToNativeLabelsd",
        "export_to_bundle",
    ):
        assert 'id="invseg.' in api and name in api, name
    for page in ("concepts", "bundle", "benchmarks", "tutorials/monai", "tutorials/modl"):
        assert (tmp_path / f"{page}.html").is_file(), page
