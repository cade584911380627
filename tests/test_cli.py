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


def test_importing_the_cli_loads_no_plotting_or_table_package() -> None:
    code = "import invseg.cli, sys; print('matplotlib' in sys.modules, 'tabulate' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["bench", "--help"]])
def test_help_loads_no_optional_package(argv: list[str]) -> None:
    code = (
        "import sys\nimport invseg\nfrom invseg.cli import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
        "print([m for m in ('matplotlib', 'tabulate', 'nnunetv2') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stderr


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


def test_config_list_and_show(capsys) -> None:
    assert main(["config", "list"]) == 0
    out = capsys.readouterr().out
    assert "brats_partially_invres" in out and "recon_2d" in out
    assert main(["config", "show", "demo"]) == 0
    from invseg.runtime.config import yaml_load

    assert yaml_load(capsys.readouterr().out)["data"]["crop"] == [32, 32, 32]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.batch_size=two", "train.batch_size: 'two' is not an integer"),
        ("train.batch_size=0", "train.batch_size: 0 must be >= 1"),
        ("data.crop=16", "data.crop: 16 must be a list of 3 integers"),
        ("data.augment='no'", "data.augment: 'no' must be true or false"),
        ("train.lr=abc", "train.lr: 'abc' is not a number"),
    ],
)
def test_bad_override_is_one_line_exit_2(override: str, message: str, capsys) -> None:
    status = main(["train", "brats_partially_invres", "--set", override])
    err = capsys.readouterr().err
    assert status == 2 and err.startswith(f"invseg: error: {message}") and err.count("\n") == 1


@pytest.mark.parametrize("override", ["train.batch_size=0", "train.steps=0", "train.lr=abc"])
def test_recon_bad_override_is_one_line_exit_2(override: str, capsys) -> None:
    assert main(["recon", "train", "recon_2d", "--set", override]) == 2
    assert capsys.readouterr().err.startswith(f"invseg: error: {override.split('=')[0]}: ")


def test_train_and_bench_take_output_flags() -> None:
    parser = build_parser()
    assert parser.parse_args(["train", "demo", "-o", "r"]).output == Path("r")
    assert parser.parse_args(["recon", "train", "recon_2d", "--output", "r"]).output == Path("r")
    assert parser.parse_args(["bench", "nets", "-o", "b.md"]).output == Path("b.md")


def test_only_rank_0_reports_the_run_folder(brats_tiny, tmp_path, monkeypatch, capsys) -> None:
    import yaml

    from tests.conftest import tiny_config

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_config(brats_tiny.root, tmp_path / "x", steps=1)))
    import invseg.commands.train as train_mod

    monkeypatch.setattr(train_mod, "train", lambda *a, **k: tmp_path / "x")
    monkeypatch.setenv("RANK", "1")
    assert main(["train", str(config), "-o", str(tmp_path / "x")]) == 0
    assert "run written to" not in capsys.readouterr().out
    monkeypatch.setenv("RANK", "0")
    assert main(["train", str(config)]) == 0
    assert "run written to" in capsys.readouterr().out


def test_bench_parts_only_for_recon(capsys) -> None:
    assert main(["bench", "engine", "--parts", "speed"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("invseg: error: --parts applies to bench recon") and err.count("\n") == 1
