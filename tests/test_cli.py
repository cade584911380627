from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from invseg.cli import build_parser, main


def test_every_subcommand_has_help() -> None:
    parser = build_parser()
    for argv in (
        ["demo"],
        ["train"],
        ["predict"],
        ["evaluate"],
        ["data", "synth"],
        ["recon", "train"],
        ["recon", "predict"],
        ["bench"],
    ):
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args([*argv, "--help"])
        assert exit_info.value.code == 0


def test_predict_input_may_be_repeated_and_take_several_paths() -> None:
    args = build_parser().parse_args(
        ["predict", "-m", "m.pt", "-i", "a", "b", "-i", "c", "-o", "o"]
    )
    assert args.input == [Path("a"), Path("b"), Path("c")]


def test_user_error_is_one_line_and_exit_status_2(tmp_path: Path, capsys) -> None:
    status = main(["train", str(tmp_path / "missing.yaml")])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("invseg: error: ") and err.count("\n") == 1
    assert "missing.yaml" in err


def test_bad_input_through_the_real_console_entry_has_no_traceback(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "invseg", "evaluate", "--pred", str(empty), "--ref", str(empty)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("invseg: error: ")


def test_data_synth_then_discover(tmp_path: Path, capsys) -> None:
    from invseg.data import discover

    out = tmp_path / "brats"
    status = main(
        [
            "data",
            "synth",
            "--kind",
            "brats",
            "-o",
            str(out),
            "--cases",
            "2",
            "--shape",
            "24",
            "24",
            "16",
        ]
    )
    assert status == 0 and "2 easy brats2020 cases" in capsys.readouterr().out
    info = discover(out)
    assert info.layout == "brats2020" and len(info.cases) == 2
