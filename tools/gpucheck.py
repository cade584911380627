"""``make gpu-check``: does everything that matters work on this GPU machine? One command.

Run it with the machine's own interpreter, the package imported from the checkout (no venv is
created, nothing is downloaded)::

    PYTHON=python3 make gpu-check          # or: PYTHONPATH=. python3 -m tools.gpucheck

Checks, in order, each ending as one summary line ``PASS|FAIL|SKIP <check>: <numbers>``:

1. ``packages``: the packages needed beyond torch import (:data:`REQUIRED`); the optional ones
   (:data:`OPTIONAL`) are listed when missing, nothing else depends on them;
2. ``lazy imports``: every command and bench module imports with SimpleITK, nilearn, memcnn
   and matplotlib made unimportable (they are imported inside functions only);
3. ``cuda``: a CUDA device is visible;
4. ``pytest -m gpu``: the CUDA tests (``tests/gpu``);
5. ``bench engine``, ``bench nets``, ``bench recon`` with ``--device cuda --quick`` (recon:
   its speed and scale tables; the cine quality run is ``invseg bench recon --device cuda``);
   their sections go into the benchmarks page as ``<suite>-cuda`` (the CPU sections are kept);
6. ``plan``: ``invseg plan CONFIG --budget 12GB --device cuda --json`` when the ``plan``
   command exists (skipped otherwise).

The exit status is 0 when no check failed. The stage time limits add up to under 8 minutes.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["OPTIONAL", "REQUIRED", "Check", "main"]

#: import name -> pip name of what the core checks need beyond torch.
REQUIRED = {
    "monai": "monai",
    "nibabel": "nibabel",
    "numpy": "numpy",
    "pandas": "pandas",
    "tabulate": "tabulate",
    "yaml": "pyyaml",
    "tqdm": "tqdm",
    "scipy": "scipy",
    "pytest": "pytest",
}
#: import name -> (pip name, what needs it); missing ones are reported, not failed.
OPTIONAL = {
    "nilearn": ("nilearn", "synthetic datasets (the predict test, bench recon phantoms)"),
    "matplotlib": ("matplotlib", "benchmark plots"),
    "memcnn": ("memcnn", "the memcnn rows of bench engine"),
    "SimpleITK": ("simpleitk", "reading .mha/.nrrd images"),
    "skimage": ("scikit-image", "SSIM in bench recon"),
    "h5py": ("h5py", "fastMRI .h5 files"),
}
LAZY = ("SimpleITK", "nilearn", "memcnn", "matplotlib")
MODULES = (
    "invseg.engine",
    "invseg.nets",
    "invseg.recon",
    "invseg.data",
    "invseg.runtime",
    "invseg.commands.train",
    "invseg.commands.predict",
    "invseg.commands.evaluate",
    "invseg.commands.recon",
    "invseg.bench.engine",
    "invseg.bench.nets",
    "invseg.bench.recon",
    "invseg.cli",
)
#: seconds per stage; together under 8 minutes.
LIMITS = {"pytest": 170, "engine": 50, "nets": 110, "recon": 90, "plan": 30}
PLAN_CONFIG = "configs/brats_partially_invres.yaml"


@dataclass
class Check:
    """One line of the summary."""

    name: str
    status: str  # PASS, FAIL or SKIP
    detail: str

    def line(self) -> str:
        return f"{self.status} {self.name}: {self.detail}"


def check_packages() -> Check:
    """Import every required and optional package; name the missing ones."""
    missing = [pip for mod, pip in REQUIRED.items() if not _importable(mod)]
    absent = [f"{pip} ({why})" for mod, (pip, why) in OPTIONAL.items() if not _findable(mod)]
    found = len(REQUIRED) - len(missing)
    detail = f"{found}/{len(REQUIRED)} required"
    if missing:
        detail += "; missing: " + ", ".join(missing) + " (bring them as wheels, pip install *.whl)"
    if absent:
        detail += "; optional missing: " + "; ".join(absent)
    return Check("packages", "FAIL" if missing else "PASS", detail)


def _findable(module: str) -> bool:
    """Installed, without importing it (memcnn changes warning filters on import)."""
    return importlib.util.find_spec(module) is not None


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except Exception:  # a broken install counts as missing
        return False
    return True


_LAZY_PROBE = """
import importlib, importlib.abc, sys
LAZY = {lazy!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in LAZY:
            raise ImportError("blocked by gpu-check: " + name)
sys.meta_path.insert(0, Block())
bad = []
for m in {modules!r}:
    try:
        importlib.import_module(m)
    except Exception as e:
        bad.append(m + ": " + type(e).__name__ + ": " + str(e).splitlines()[0])
print("\\n".join(bad))
"""


def check_lazy_imports(python: str) -> Check:
    """Import every command and bench module with the heavy optional packages blocked."""
    code = _LAZY_PROBE.format(lazy=LAZY, modules=MODULES)
    proc = _run([python, "-c", code], timeout=120)
    bad = [line for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode or bad:
        detail = "; ".join(bad) or proc.stderr.strip().splitlines()[-1:]
        return Check("lazy imports", "FAIL", f"{detail}")
    return Check("lazy imports", "PASS", f"{len(MODULES)} modules import without {', '.join(LAZY)}")


def check_cuda() -> Check:
    """A visible CUDA device, named with its memory and the torch/CUDA versions."""
    import torch

    if not torch.cuda.is_available():
        return Check("cuda", "FAIL", f"no CUDA device visible (torch {torch.__version__})")
    props = torch.cuda.get_device_properties(0)
    return Check(
        "cuda",
        "PASS",
        f"{torch.cuda.device_count()} x {props.name}, {props.total_memory / 2**30:.0f} GiB, "
        f"torch {torch.__version__}, CUDA {torch.version.cuda}",
    )


def check_pytest(python: str, device: str = "cuda") -> Check:
    """``pytest -m gpu``; passes when no test failed and (on CUDA) at least one ran."""
    cmd = [python, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests"]
    proc = _run(cmd, timeout=LIMITS["pytest"])
    counts = _pytest_counts(proc.stdout + proc.stderr)
    detail = ", ".join(f"{n} {k}" for k, n in counts.items()) or _tail(proc)
    if proc.returncode == 124:
        return Check("pytest -m gpu", "FAIL", f"timed out after {LIMITS['pytest']} s; {detail}")
    ok = proc.returncode == 0 and (counts.get("passed", 0) > 0 or device == "cpu")
    return Check("pytest -m gpu", "PASS" if ok else "FAIL", detail)


def _pytest_counts(text: str) -> dict[str, int]:
    """``{"passed": 20, "skipped": 1, ...}`` from pytest's last summary line."""
    kinds = "passed|failed|skipped|errors?|xfailed|xpassed|deselected"
    lines = [ln for ln in text.splitlines() if re.search(rf"\d+ ({kinds})", ln)]
    if not lines:
        return {}
    found = re.findall(rf"(\d+) ({kinds})", lines[-1])
    return {kind: int(n) for n, kind in found}


def check_bench(python: str, suite: str, output: Path, device: str = "cuda") -> Check:
    """``invseg bench SUITE --device cuda --quick``; its section lands in ``output``."""
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "benchmarks.md"
        cmd = [python, "-m", "invseg", "bench", suite, "--device", device, "--quick"]
        if suite == "recon":  # the cine quality run trains for minutes: bench recon on its own
            cmd += ["--parts", "speed", "scale"]
        start = time.perf_counter()
        proc = _run([*cmd, "--output", str(page)], timeout=LIMITS[suite])
        seconds = time.perf_counter() - start
        if proc.returncode or not page.exists():
            why = "timed out" if proc.returncode == 124 else _tail(proc)
            if page.exists() and f"<!-- bench:{suite} -->" in page.read_text():
                # a suite writes its section before its slow tail (bench nets: largest cubes)
                rows = move_section(page, suite, output, device)
                why += f"; the section written so far ({rows} table rows) kept in {output}"
            return Check(f"bench {suite}", "FAIL", f"{why} ({seconds:.0f} s)")
        rows = move_section(page, suite, output, device)
    return Check(f"bench {suite}", "PASS", f"{rows} table rows in {seconds:.0f} s -> {output}")


def move_section(page: Path, suite: str, output: Path, device: str = "cuda") -> int:
    """Copy the ``suite`` section of ``page`` into ``output`` as ``<suite>-<device>``.

    Plots written next to ``page`` are copied to ``<output dir>/img/`` with a ``-<device>``
    suffix and the links rewritten. Returns the number of table rows in the section.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> lines = ["<!-- bench:nets -->", "| a |", "|---|", "| 1 |", "<!-- /bench:nets -->"]
        >>> _ = (d / "page.md").write_text(chr(10).join(lines))
        >>> move_section(d / "page.md", "nets", d / "benchmarks.md")
        2
        >>> "<!-- bench:nets-cuda -->" in (d / "benchmarks.md").read_text()
        True
    """
    from invseg.bench.report import update_section

    text = page.read_text()
    begin, end = f"<!-- bench:{suite} -->", f"<!-- /bench:{suite} -->"
    body = text.split(begin, 1)[1].split(end, 1)[0] if begin in text else text
    for png in sorted((page.parent / "img").glob("*.png")):
        target = output.parent / "img" / f"{png.stem}-{device}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(png, target)
        body = body.replace(f"img/{png.name}", f"img/{target.name}")
    update_section(output, f"{suite}-{device}", body.strip())
    return sum(1 for ln in body.splitlines() if ln.startswith("|") and "---" not in ln)


def check_plan(python: str, config: str, device: str = "cuda") -> Check:
    """``invseg plan CONFIG --budget 12GB --device cuda --json``, if the command exists."""
    cmd = [python, "-m", "invseg", "plan", config, "--budget", "12GB", "--device", device]
    proc = _run([*cmd, "--json"], timeout=LIMITS["plan"])
    if "invalid choice: 'plan'" in proc.stderr:
        return Check("plan", "SKIP", "skipped: plan not available in this checkout")
    if proc.returncode:
        return Check("plan", "FAIL", _tail(proc))
    try:
        plan = json.loads(proc.stdout)
    except json.JSONDecodeError:
        return Check("plan", "FAIL", "output is not JSON: " + proc.stdout.strip()[:120])
    keys = ", ".join(list(plan)[:6]) if isinstance(plan, dict) else type(plan).__name__
    return Check("plan", "PASS", f"{config} at 12GB: {keys}")


def _run(cmd: Sequence[str], *, timeout: float) -> subprocess.CompletedProcess:
    """Run ``cmd`` with the checkout first on ``PYTHONPATH``; rc 124 on timeout."""
    path = os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    try:
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        out = err.stdout.decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
        return subprocess.CompletedProcess(cmd, 124, out, "timed out")


def _tail(proc: subprocess.CompletedProcess) -> str:
    lines = (proc.stderr or proc.stdout or "").strip().splitlines()
    return (lines[-1] if lines else f"exit {proc.returncode}")[:200]


def main(argv: Sequence[str] | None = None) -> int:
    """Run every check, print the summary, return 0 when none failed."""
    parser = argparse.ArgumentParser(prog="gpu-check", description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--plan-config", default=PLAN_CONFIG)
    parser.add_argument(
        "--device", default="cuda", choices=["cuda", "cpu"], help="cpu: a dry run of the script"
    )
    a = parser.parse_args(argv)
    python = sys.executable
    start = time.perf_counter()
    checks = [check_packages()]
    _say(checks[-1])
    if checks[0].status == "FAIL":
        return _summary(checks, start)
    checks.append(check_lazy_imports(python))
    _say(checks[-1])
    if a.device == "cuda":
        checks.append(check_cuda())
        _say(checks[-1])
    if checks[-1].status == "PASS":
        checks.append(check_pytest(python, a.device))
        _say(checks[-1])
        for suite in ("engine", "nets", "recon"):
            checks.append(check_bench(python, suite, a.output, a.device))
            _say(checks[-1])
        checks.append(check_plan(python, a.plan_config, a.device))
        _say(checks[-1])
    return _summary(checks, start)


def _say(check: Check) -> None:
    print(f"[gpu-check] {check.line()}", flush=True)


def _summary(checks: list[Check], start: float) -> int:
    failed = sum(c.status == "FAIL" for c in checks)
    print(f"\n== gpu-check summary ({time.perf_counter() - start:.0f} s) ==")
    for c in checks:
        print(c.line())
    print(f"{len(checks) - failed}/{len(checks)} checks without failure")
    return 1 if failed else 0


if __name__ == "__main__":  # pragma: no cover - entry point
    raise SystemExit(main())
