"""``make gpu-check``'s script: summary parsing, section moving, missing plan, CPU exit."""

from __future__ import annotations

import sys

from tools import gpucheck


def test_pytest_summary_counts_are_parsed():
    text = "....\n===== 18 passed, 2 skipped, 370 deselected in 12.3s =====\n"
    assert gpucheck._pytest_counts(text) == {"passed": 18, "skipped": 2, "deselected": 370}
    assert gpucheck._pytest_counts("21 skipped, 3 deselected in 1s") == {
        "skipped": 21,
        "deselected": 3,
    }
    assert gpucheck._pytest_counts("no summary") == {}


def test_missing_plan_command_is_skipped_not_failed():
    check = gpucheck.check_plan(sys.executable, "configs/brats_partially_invres.yaml", "cpu")
    if check.status != "SKIP":  # a checkout that has `invseg plan`
        assert check.status in ("PASS", "FAIL")
    else:
        assert "skipped: plan not available" in check.detail


def test_section_and_plot_are_copied_under_a_device_name(tmp_path):
    page = tmp_path / "run" / "benchmarks.md"
    (page.parent / "img").mkdir(parents=True)
    (page.parent / "img" / "nets_memory_vs_blocks.png").write_bytes(b"png")
    page.write_text(
        "<!-- bench:nets -->\n| a |\n|---|\n| 1 |\n![p](img/nets_memory_vs_blocks.png)\n"
        "<!-- /bench:nets -->\n"
    )
    out = tmp_path / "docs" / "benchmarks.md"
    out.parent.mkdir()
    out.write_text("<!-- bench:nets -->\nCPU\n<!-- /bench:nets -->\n")
    assert gpucheck.move_section(page, "nets", out) == 2
    text = out.read_text()
    assert "CPU" in text and "<!-- bench:nets-cuda -->" in text
    assert "img/nets_memory_vs_blocks-cuda.png" in text
    assert (out.parent / "img" / "nets_memory_vs_blocks-cuda.png").read_bytes() == b"png"


def test_packages_check_names_what_is_missing(monkeypatch):
    monkeypatch.setitem(gpucheck.REQUIRED, "surely_not_a_module_xyz", "surely-not-xyz")
    check = gpucheck.check_packages()
    assert check.status == "FAIL" and "missing: surely-not-xyz" in check.detail


def test_without_cuda_the_summary_fails_on_the_cuda_line(monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(
        gpucheck,
        "check_lazy_imports",
        lambda python: gpucheck.Check("lazy imports", "PASS", "stubbed"),
    )
    assert gpucheck.main([]) == 1
    out = capsys.readouterr().out
    assert "FAIL cuda: no CUDA device visible" in out and "checks without failure" in out


def test_a_timed_out_suite_keeps_the_section_it_wrote(monkeypatch, tmp_path):
    import subprocess

    def fake_run(cmd, *, timeout):
        page = cmd[cmd.index("--output") + 1]
        with open(page, "w") as f:
            f.write("<!-- bench:nets -->\n| a |\n|---|\n| 1 |\n| 2 |\n<!-- /bench:nets -->\n")
        return subprocess.CompletedProcess(cmd, 124, "", "timed out")

    monkeypatch.setattr(gpucheck, "_run", fake_run)
    out = tmp_path / "benchmarks.md"
    check = gpucheck.check_bench(sys.executable, "nets", out, "cuda")
    assert check.status == "FAIL"
    assert "timed out; the section written so far (3 table rows) kept" in check.detail
    assert "<!-- bench:nets-cuda -->\n| a |" in out.read_text()


def test_largest_edge_search_stops_at_the_first_misfit_or_the_time_budget():
    from invseg.bench.harness import search_edges

    tried = []

    def fits(edge):
        tried.append(edge)
        return edge < 256

    assert search_edges(fits, (64, 128, 192, 256, 320)) == (192, True)
    assert tried == [64, 128, 192, 256]  # nothing tried after the first misfit
    assert search_edges(lambda e: False, (64, 128)) == (None, True)
    clock = iter([0.0, 5.0, 11.0, 20.0])  # start, then one reading before each later edge
    found = search_edges(lambda e: True, (64, 128, 192), budget_s=10, clock=lambda: next(clock))
    assert found == (128, False)  # 192 not tried: 11 s had passed


def test_gpu_tests_collect_without_the_optional_packages():
    """``pytest -m gpu tests`` imports every test module: none may need an optional package."""
    import re
    import subprocess
    from pathlib import Path

    blocked = tuple(gpucheck.OPTIONAL)
    code = (
        "import importlib.abc, sys\n"
        f"BLOCKED = {blocked!r}\n"
        "class Absent(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in BLOCKED:\n"
        "            raise ModuleNotFoundError('not installed: ' + name)\n"
        "sys.meta_path.insert(0, Absent())\n"
        "import pytest\n"
        "args = ['--collect-only', '-q', '-m', 'gpu', '-p', 'no:cacheprovider', 'tests']\n"
        "sys.exit(pytest.main(args))\n"
    )
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=120
    )
    assert proc.returncode == 0, proc.stdout[-1500:]
    collected = re.search(r"(\d+)/\d+ tests collected", proc.stdout)
    assert collected and int(collected.group(1)) >= 10, proc.stdout[-500:]
