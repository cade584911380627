"""The ``invseg`` command line: each subcommand parses its flags and calls one workflow.

Imports of torch and the workflows happen inside the handlers, so ``invseg --help`` is fast.
User errors (bad paths, configs, data) print one line and exit with status 2; ``--debug``
shows the traceback instead. Under ``torchrun`` only rank 0 prints what every rank meets alike
(SIGINT/SIGTERM, config errors, a diverged run); another rank's own error says its rank.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

Handler = Callable[[argparse.Namespace], int]
LABEL_CHOICES = ("brats", "brats2023", "msd", "iseg")


def _demo(a: argparse.Namespace) -> int:
    from invseg.commands.demo import demo

    demo(a.output, cases=a.cases, minutes=a.minutes, seed=a.seed)
    return 0


def _train(a: argparse.Namespace) -> int:
    from invseg.commands.train import train
    from invseg.runtime.distributed import is_main_process

    run_dir = train(a.config, overrides=a.set, resume=a.resume, output=a.output)
    if is_main_process():  # under torchrun every rank returns here; report once
        print(f"run written to {run_dir}")
    return 0


def _config(a: argparse.Namespace) -> int:
    from invseg.runtime.config import find_config, list_configs

    if a.config_command == "list":
        configs = list_configs()
        width = max(map(len, configs), default=0)
        for name, about in configs.items():
            print(f"{name:<{width}}  {about}")
        return 0
    sys.stdout.write(find_config(a.name).read_text())
    return 0


def _predict(a: argparse.Namespace) -> int:
    from invseg.commands.predict import predict

    failed = predict(
        a.model,
        a.input,
        a.output,
        device=a.device,
        tta=a.tta,
        save_probabilities=a.save_probabilities,
        overlap=a.overlap,
        labels=a.labels,
        skip_existing=a.skip_existing,
        model_class=a.model_class,
    )
    return 1 if failed else 0


def _evaluate(a: argparse.Namespace) -> int:
    from invseg.commands.evaluate import evaluate, exit_status, format_summary

    frame = evaluate(
        a.pred,
        a.ref,
        labels=a.labels,
        output_csv=a.output or a.pred / "metrics.csv",
        scoring=a.convention,
    )
    print(format_summary(frame))
    return exit_status(frame)


def _synth(a: argparse.Namespace) -> int:
    from invseg.data.synth import held_out_folder, synthesize

    shape = "native" if a.native else a.shape
    info = synthesize(a.kind, a.output, cases=a.cases, shape=shape, seed=a.seed, layout=a.layout,
                      unlabeled=a.unlabeled, preset=a.preset, test_cases=a.test_cases)  # fmt: skip
    held = f"; {a.test_cases} held-out cases to {held_out_folder(a.output)}" if a.test_cases else ""
    print(f"wrote {len(info.cases)} {a.preset} {info.layout} cases to {info.root}{held}")
    return 0


def _recon_train(a: argparse.Namespace) -> int:
    from invseg.commands.recon import train_recon

    best = train_recon(a.config, overrides=a.set, resume=a.resume, output=a.output)
    print(f"run written to {best.parent}")
    return 0


def _recon_predict(a: argparse.Namespace) -> int:
    from invseg.commands.recon import predict_recon

    return 1 if predict_recon(a.model, a.input, a.output, fmt=a.format) else 0


def _bench(a: argparse.Namespace) -> int:
    if a.suite in ("quality", "nnunet"):
        from invseg.bench import nnunet, quality

        if a.suite == "nnunet":
            return nnunet.from_cli(a)
        out = a.output or Path("bench_quality")
        print(quality.run(quick=a.quick, output=out, cases=a.cases, budget=a.budget,
                          seeds=a.seeds, device=a.device, docs=a.docs, steps=a.steps,
                          models=a.models or None))  # fmt: skip
        print(f"results written to {out}")
        return 0
    from invseg.bench import engine, nets, plan, recon

    output = a.output or Path("docs/benchmarks.md")
    suites = {"engine": engine.run, "nets": nets.run, "recon": recon.run, "plan": plan.docs_section}
    names = list(suites) if a.suite == "all" else [a.suite]
    if a.parts and a.suite != "recon":
        raise ValueError(f"--parts applies to bench recon, not {a.suite}")
    for name in names:
        extra = {"parts": a.parts} if name == "recon" and a.parts else {}
        print(suites[name](quick=a.quick, output=output, device=a.device, **extra))
        print()
    print(f"results written to {output}")
    return 0


def _plan(a: argparse.Namespace) -> int:
    from invseg.commands.plan import run

    print(run(a.config, shape=a.shape, batch=a.batch, budget=a.budget, target=a.target,
              amp=a.amp, as_json=a.json, device=a.device, cubes=a.cubes))  # fmt: skip
    return 0


def _add_train_parsers(sub: Any) -> None:
    """``demo`` and ``train``."""
    p = sub.add_parser("demo", help="synthesise BraTS data, train, predict, evaluate (CPU)")
    p.add_argument("-o", "--output", type=Path, default=Path("demo_output"))
    p.add_argument("--cases", type=int, default=8, help="synthetic labelled cases")
    p.add_argument("--minutes", type=float, default=4.0, help="training time budget")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=_demo)

    p = sub.add_parser("train", help="train a segmentation network from a YAML config")
    p.add_argument("config", help="YAML file or packaged config name (invseg config list)")
    p.add_argument(
        "-o", "--output", type=Path, default=None, help="run folder (default: output.dir)"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.lr=3e-4 (repeatable)",
    )
    p.add_argument("--resume", action="store_true", help="continue from the run's last.pt")
    p.set_defaults(handler=_train)


def _add_recon_bench_config_parsers(sub: Any) -> None:
    """``recon train|predict``, ``bench``, ``plan``, ``config list|show``."""
    recon = sub.add_parser("recon", help="MoDL MRI reconstruction").add_subparsers(
        dest="recon_command", required=True, metavar="COMMAND"
    )
    p = recon.add_parser("train", help="train MoDL with memory-efficient learning")
    p.add_argument("config", help="YAML file or packaged config name (recon_2d, ...)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--resume", action="store_true", help="continue from the run's last.pt")
    p.add_argument(
        "-o", "--output", type=Path, default=None, help="run folder (default: output.dir)"
    )
    p.set_defaults(handler=_recon_train)
    p = recon.add_parser("predict", help="reconstruct k-space files (.h5 or .npz)")
    p.add_argument("-m", "--model", type=Path, required=True)
    p.add_argument("-i", "--input", type=Path, nargs="+", action="extend", required=True)
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument("--format", choices=["nifti", "npy"], default="nifti")
    p.set_defaults(handler=_recon_predict)

    p = sub.add_parser("bench", help="measure memory and speed against the baselines")
    p.add_argument("suite", choices=["engine", "nets", "recon", "plan", "quality", "nnunet", "all"])
    p.add_argument("--quick", action="store_true", help="small sizes, few repeats")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    out = "docs page (default docs/benchmarks.md); quality, nnunet: a folder (bench_<suite>)"
    p.add_argument("-o", "--output", type=Path, default=None, help=out)
    p.add_argument("--cases", type=int, default=16, help="quality: training cases (4 or 16)")
    p.add_argument("--seeds", type=int, default=3, help="quality: seeds per model")
    p.add_argument("--budget", default=None, help="quality: equal-memory regime, e.g. 512MB")
    p.add_argument("--docs", type=Path, default=None, help="quality: markdown page to update")
    p.add_argument("--steps", type=int, default=None, help="quality: training steps per run")
    p.add_argument("--models", nargs="+", default=None, help="quality: zoo models (default all)")
    p.add_argument(
        "--parts", nargs="+", choices=["speed", "quality", "scale"], default=None,
        help="recon: which tables (default all; quality trains, the others take seconds on a GPU)",
    )  # fmt: skip
    p.set_defaults(handler=_bench)

    p = sub.add_parser("plan", help="peak memory of a training step; what fits a budget")
    p.add_argument("config", help="training config: YAML file or packaged name (its model)")
    p.add_argument("--shape", type=int, nargs=3, metavar=("D", "H", "W"), default=None,
                   help="plan exactly this input: peak_bytes and its parts")  # fmt: skip
    p.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    p.add_argument("--budget", default=None, help="memory, e.g. 12GB (default 12GB w/o --shape)")
    p.add_argument("--target", choices=["cpu", "cuda"], default=None,
                   help="device the plan is for (default cuda)")  # fmt: skip
    p.add_argument("--amp", choices=["bf16", "fp16"], default=None)
    p.add_argument("--json", action="store_true", help="print JSON per memory mode")
    p.add_argument("--device", default="cpu", help="where to measure; cuda also verifies")
    p.add_argument("--cubes", type=int, nargs=3, default=None, metavar="S",
                   help="the three cubes measured (default 32 40 48 at multiple 8)")  # fmt: skip
    p.set_defaults(handler=_plan)

    config = sub.add_parser("config", help="list or print the packaged configs").add_subparsers(
        dest="config_command", required=True, metavar="COMMAND"
    )
    p = config.add_parser("list", help="names of the packaged configs")
    p.set_defaults(handler=_config)
    p = config.add_parser("show", help="print a config (e.g. invseg config show demo > my.yaml)")
    p.add_argument("name", help="packaged config name or YAML file")
    p.set_defaults(handler=_config)


def _add_predict_parser(sub: Any) -> None:
    p = sub.add_parser("predict", help="write NIfTI label maps for cases, folders or files")
    p.add_argument("-m", "--model", type=Path, required=True, help="checkpoint (last.pt)")
    p.add_argument(
        "--model-class",
        default=None,
        metavar="DOTTED.PATH",
        help="network class you trust, for a checkpoint of a network outside invseg's registry",
    )
    p.add_argument(
        "-i",
        "--input",
        type=Path,
        nargs="+",
        action="extend",
        required=True,
        help="case folders, dataset folders or image files (repeatable)",
    )
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--tta", action="store_true", help="flip test-time augmentation")
    p.add_argument("--save-probabilities", action="store_true")
    p.add_argument("--overlap", type=float, default=None, help="sliding-window overlap")
    p.add_argument(
        "--labels",
        choices=LABEL_CHOICES,
        default=None,
        help="label values to write (default: the input layout's, e.g. brats2023: ET=3)",
    )
    p.add_argument(
        "--skip-existing",
        action="store_true",
        help="keep cases already predicted in the output folder (default: replace them)",
    )
    p.set_defaults(handler=_predict)


def _add_evaluate_parser(sub: Any) -> None:
    p = sub.add_parser("evaluate", help="Dice and surface distances against references")
    p.add_argument("-p", "--pred", type=Path, required=True, metavar="DIR", help="predictions")
    p.add_argument(
        "-r", "--ref", type=Path, required=True, metavar="DIR", help="dataset or label folder"
    )
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        default=None,
        metavar="CSV",
        help="per-case CSV (default: PRED/metrics.csv)",
    )
    p.add_argument(
        "--labels",
        choices=LABEL_CHOICES,
        default=None,
        help="label values (default: the dataset's, or detected from the references)",
    )
    p.add_argument(
        "--convention",
        choices=["brats", "none"],
        default=None,
        help="a reference without a prediction: brats scores it as an empty prediction (the "
        "default for BraTS labels), none leaves it out; empty masks always score as BraTS does",
    )
    p.set_defaults(handler=_evaluate)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``invseg`` command."""
    parser = argparse.ArgumentParser(
        prog="invseg",
        description="Memory-efficient invertible 3D networks for medical imaging.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train_parsers(sub)
    _add_predict_parser(sub)
    _add_evaluate_parser(sub)

    data = sub.add_parser("data", help="dataset tools").add_subparsers(
        dest="data_command", required=True, metavar="COMMAND"
    )
    p = data.add_parser("synth", help="write a synthetic dataset in the real on-disk layout")
    p.add_argument("--kind", choices=["brats", "iseg"], required=True)
    p.add_argument("-o", "--output", type=Path, required=True, help="dataset folder")
    p.add_argument(
        "--preset",
        choices=["easy", "medium", "hard"],
        default="easy",
        help="easy: one distinct ellipsoid tumour (smoke tests); hard: irregular multifocal "
        "lesions, overlapping contrasts, artefacts (demo, GPU benchmarks; iSeg: isointense); "
        "medium: hard's lesions with clearer contrasts (CPU quick benchmark)",
    )
    p.add_argument("--cases", type=int, default=6)
    geometry = p.add_mutually_exclusive_group()
    geometry.add_argument(
        "--shape", type=int, nargs=3, default=(64, 64, 48), metavar=("X", "Y", "Z")
    )
    geometry.add_argument(
        "--native",
        action="store_true",
        help="real geometry at 1 mm: BraTS 240x240x155, iSeg 144x192x256",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--layout",
        default=None,
        help="brats: brats2020 (default), brats2021, brats2023, msd or nnunet; "
        "iseg: iseg (default) or nnunet",
    )
    p.add_argument("--unlabeled", type=int, default=0, help="extra prediction-only cases")
    held = "also write N independent labelled cases into OUTPUT_test/ (same layout), to predict on"
    p.add_argument("--test-cases", type=int, default=0, metavar="N", help=held)
    p.set_defaults(handler=_synth)

    _add_recon_bench_config_parsers(sub)
    from invseg.commands.nnunet import add_parser as add_nnunet_parser  # argparse only

    add_nnunet_parser(sub)  # nnunet plans: its flags live with its command
    return parser


def _interrupted() -> type[BaseException]:
    """The loop's TrainingInterrupted when training was imported (keeps --help fast)."""
    loop = sys.modules.get("invseg.runtime.loop")
    return loop.TrainingInterrupted if loop is not None else _Never


class _Never(Exception):
    """Never raised."""


USER_ERRORS = (ValueError, TypeError, LookupError, OSError, RuntimeError)


def _report(line: str, err: BaseException) -> None:
    """One line on stderr; ranks > 0 print only their own errors, not what every rank meets."""
    rank = os.environ.get("RANK", "0")
    if rank in ("", "0"):
        return print(line, file=sys.stderr)
    task, coerce = (sys.modules.get(f"invseg.runtime.{m}") for m in ("task", "coerce"))
    alike = (KeyboardInterrupt, _interrupted(), getattr(task, "TrainingDiverged", _Never),
             getattr(coerce, "ConfigError", _Never))  # fmt: skip
    if not isinstance(err, alike):
        print(line.replace("invseg: ", f"invseg: rank {rank}: ", 1), file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``invseg`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except _interrupted() as stop:
        _report(str(stop), stop)
        return int(stop.exit_code)
    except KeyboardInterrupt as stop:
        _report("invseg: interrupted", stop)
        return 130
    except USER_ERRORS as err:
        if args.debug:
            raise
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        _report(f"invseg: error: {message}", err)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
