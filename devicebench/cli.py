"""The ``devicebench`` command: info, run, calibrate, sweep, compare, report, history, peer and scaling.

``run`` measures rows in fresh worker processes (coordinator.py); ``pytest benchmarks`` measures the same rows in
one process. What each command does is in commands.py; this module declares their options.

Exit codes: 0 ok; 1 a regression was found with ``--fail-on-regression``; 2 a usage or data error, or a gate that
cannot judge (an inconclusive row, an unreadable run, no row in common with the baseline, runs of two machines);
the message says what to fix.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from devicebench import calibration, compare, machine_lock, signals
from devicebench.commands import (CALIBRATION_PAIRS, CALIBRATION_PROCESSES, cmd_calibrate, cmd_compare, cmd_history,
                                  cmd_info, cmd_peer, cmd_report, cmd_run, cmd_scaling, cmd_sweep)
from devicebench.coordinator import DEFAULT_ROUND_SECONDS
from devicebench.errors import DevicebenchError
from devicebench.workloads.base import PIPELINES


def _threshold(text: str, shown: str | None = None) -> float:
    """``5%`` or ``0.05``; a bare number above 1 is refused rather than read as a multiple (``5`` = 500%).
    ``shown``: the whole argument, for the message (``seed=10%``)."""
    form = "give a percentage like 5% or a fraction like 0.05"
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{shown or text!r}: {form}") from None
    if not text.endswith("%") and value >= 1:
        raise argparse.ArgumentTypeError(f"{shown or text!r}: a bare number is a fraction ({text} would be "
                                         f"{value:.0%}): {form}")
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{shown or text!r}: a size from 0 to under 100%: {form}")
    return value


def _pipeline_size(text: str) -> tuple[str | None, float]:
    """One ``--threshold``: ``5%`` for every row, or ``seed=10%`` for one pipeline's rows."""
    pipeline, _, size = text.rpartition("=")
    if pipeline and pipeline not in PIPELINES:
        raise argparse.ArgumentTypeError(f"{text!r}: {pipeline!r} is not a pipeline; give one of "
                                         f"{', '.join(PIPELINES)}, as in seed=10%")
    return pipeline or None, _threshold(size, shown=text)


def _until_part(text: str) -> tuple[str | None, float]:
    """One ``--until``: as ``--threshold``, above zero."""
    pipeline, value = _pipeline_size(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a size above zero, such as 5%")
    return pipeline, value


def _duration(text: str) -> float:
    """``90s``, ``10m`` or ``1h30m``, as seconds. A bare number is refused: ``--budget 10`` meant ten minutes
    to one user and ran ten seconds."""
    import re

    match = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s)?\s*", text)
    if re.fullmatch(r"\s*-?\d+(?:\.\d+)?\s*", text):
        raise argparse.ArgumentTypeError(f"{text!r}: give the unit, such as {text.strip()}m or {text.strip()}s")
    if not text.strip() or match is None:
        raise argparse.ArgumentTypeError(f"{text!r}: give a time such as 10m, 90s or 1h30m")
    hours, minutes, seconds = (float(part) if part else 0.0 for part in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a time longer than zero, such as 10m")
    return total


def _world_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        sizes = ()
    if not sizes or sizes[0] < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give world sizes such as 1,2,4")
    return sizes


def _round_time(text: str) -> float:
    """A --round-time: a time as _duration reads it, or 0 for the scale's rounds alone."""
    return 0.0 if text.strip() in ("0", "0s") else _duration(text)


def _add_threshold_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threshold", type=_pipeline_size, action="append", metavar="[PIPELINE=]SIZE",
                        help="smallest change worth reporting, and the one a row's data must be able to see to be "
                             "judged (else inconclusive): 5%% or 0.05 (the default), under 100%%; repeat with "
                             "PIPELINE=SIZE for one pipeline's rows (the rest keep the plain size, 5%% unless "
                             "given), as the run's --until asked: --threshold 5%% --threshold seed=10%%")


def _add_process_options(parser: argparse.ArgumentParser, *, processes: int | None, output_dir: str,
                         processes_help: str, env_help: str, name: str, name_help: str) -> None:
    """The options of the commands that run the suite as several processes (run, sweep)."""
    parser.add_argument("--processes", type=int, default=processes, help=processes_help)
    parser.add_argument("--until", type=_until_part, action="append", metavar="[PIPELINE=]SIZE",
                        help="in worker pairs (two or more --env): add pairs until every row could detect a change "
                             "of this size (e.g. 5%%), each environment against the first, at the gate's level over "
                             "the rows, or --budget is spent; a row that got there is left out of later pairs. "
                             "Repeat with PIPELINE=SIZE to ask another size of one pipeline's rows, e.g. --until 5%% "
                             "--until seed=10%%; gate the runs at the same sizes (compare --threshold ...)")
    parser.add_argument("--budget", type=_duration, metavar="TIME",
                        help="stop adding worker pairs (or processes, one after another) once this much time is "
                             "measured (e.g. 10m, 1h); the next is started only if it fits")
    parser.add_argument("--round-time", type=_round_time, metavar="TIME",
                        help="in worker pairs (two or more --env): each worker times every row's rounds for about "
                             f"this long (default {DEFAULT_ROUND_SECONDS:.0f}s), at least the scale's rounds: "
                             "more rounds for fast rows, a tighter estimate per pair; 0: the scale's rounds, as "
                             "a plain pytest run times them (calibrate so for single-process comparisons)")
    parser.add_argument("--pin-rounds", choices=("pair", "off"), default=None,
                        help="in worker pairs (two or more --env): pair (the default) runs the accelerator rows' "
                             "rounds of both workers of a pair on one core, another each pair, so that what a core "
                             "is worth cancels in their ratio (cpu rows are never pinned); off leaves them where the "
                             "OS puts them, as plain pytest runs do")
    parser.add_argument("--env", action="append", default=[], metavar="LABEL=PYTHON", help=env_help)
    parser.add_argument("--name", default=name, help=name_help)
    parser.add_argument("--output-dir", default=output_dir, help="where the runs go (default %(default)s)")
    _add_calibration_option(parser)
    parser.add_argument("row_arguments", nargs=argparse.REMAINDER,
                        help="after --: which rows and how, as for pytest benchmarks (--device, --pipeline, --scale, "
                             "--data, ...), plus -k EXPRESSION and --workload LIST; e.g. -- --device cpu --scale quick "
                             "(-- --help lists them)")


def _add_calibration_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--calibration", type=Path, default=None, metavar="FILE",
                        help=f"this machine's measured noise (default $DEVICEBENCH_CALIBRATION or "
                             f"{calibration.DEFAULT_PATH}; written by devicebench calibrate)")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="devicebench", description=__doc__.splitlines()[0])
    commands = top.add_subparsers(dest="command", required=True)

    info = commands.add_parser("info", help="versions, backends, which devices can run here, and this machine's "
                                            "calibrated rows")
    _add_calibration_option(info)
    info.set_defaults(handler=lambda args: cmd_info(args))  # looked up when called (tests replace it)

    comparison = commands.add_parser("compare", help="compare saved runs (files, folders or run ids)")
    comparison.add_argument("runs", nargs="+", metavar="RUN",
                            help="a saved JSON file, a folder of them, or a run id such as 0003 under results/")
    _add_threshold_option(comparison)
    comparison.add_argument("--view", choices=compare.VIEWS, default="auto",
                            help="change: the same rows across runs (a torch upgrade); devices: one device against "
                                 "another; auto (default): change when some row is in several runs")
    comparison.add_argument("--baseline-device", choices=("cpu", "mps", "cuda"),
                            help="devices view: the device the others are compared with (default: the first)")
    comparison.add_argument("--workload", help="only this workload (e.g. mnist_mlp)")
    comparison.add_argument("--pipeline", help="only this pipeline (seed, resident or tuned)")
    comparison.add_argument("--details", action="store_true",
                            help="a table of every figure per row (default: one line per row and run)")
    comparison.add_argument("--markdown", action="store_true", help="print Markdown tables to paste into an issue")
    comparison.add_argument("--png", metavar="PATH", help="also write a throughput bar chart")
    comparison.add_argument("--fail-on-regression", action="store_true",
                            help="a CI gate (change view only): exit 1 when a row is significantly slower than that "
                                 "row in the first run, after Holm's correction, and its 95%% interval reaches the "
                                 "threshold, or its counts per step grew beyond it; exit 2 when it cannot judge (a "
                                 "row inconclusive at the threshold, a file it cannot read, no row in common, runs "
                                 "of two machines)")
    comparison.add_argument("--results-dir", default="results", help=argparse.SUPPRESS)
    _add_calibration_option(comparison)
    comparison.set_defaults(handler=cmd_compare)

    reporting = commands.add_parser("report", help="one self-contained HTML report of saved runs (opens offline)")
    reporting.add_argument("runs", nargs="+", metavar="RUN", help="saved JSON files, folders or run ids")
    reporting.add_argument("-o", "--output", default="report.html", help="the HTML file (default %(default)s)")
    _add_threshold_option(reporting)
    reporting.add_argument("--results-dir", default="results", help=argparse.SUPPRESS)
    _add_calibration_option(reporting)
    reporting.set_defaults(handler=cmd_report)

    run = commands.add_parser(
        "run", help="run the benchmarks in several fresh processes (alternating environments) and merge them",
        description="Measures the rows (selected after --, as for pytest benchmarks) in several fresh worker "
                    "processes per environment and writes one run per environment with every process's rounds. With "
                    "two or more --env, the workers are pairs: one live worker per environment, their rounds "
                    "alternated (A B B A ...), judged pair by pair (significance.py).")
    _add_process_options(
        run, processes=None, output_dir="results/processes",
        processes_help="processes per environment: one after another with one environment, worker pairs with two "
                       "or more (default 5; with --until, the most pairs to add, default no limit but --budget)",
        env_help="an environment's Python, e.g. --env old=/venvs/torch2.13/bin/python; repeat to compare: one live "
                 "worker per environment, their rounds alternated (the same Python twice is an A/A check). "
                 "Default: this Python",
        name=time.strftime("run-%Y%m%d-%H%M%S"),
        name_help="file name prefix: writes OUTPUT_DIR/NAME-LABEL.json (default run-DATE-TIME)")
    run.set_defaults(handler=cmd_run)

    sweeping = commands.add_parser(
        "sweep", help="the suite on several torch releases (an environment each), then their history",
        description="Builds or reuses a virtual environment per torch version (with its torchvision and "
                    "devicebench's requirements), measures the rows in each as --processes workers, alternating the "
                    "versions, saves one run per version and prints `devicebench history` of them.")
    sweeping.add_argument("--torch", nargs="*", default=[], metavar="VERSION",
                          help="torch versions, e.g. --torch 2.11.0 2.12.1 2.13.0 2.14.1")
    _add_process_options(
        sweeping, processes=3, output_dir="results/sweeps",
        processes_help="processes per version (default 3; the sweep costs versions x processes runs)",
        env_help="an existing environment to include as it is (no build)",
        name="sweep", name_help="the sweep's folder under --output-dir (default sweep)")
    sweeping.add_argument("--envs-dir", default="~/.cache/devicebench/envs",
                          help="where the environments live; delete it to reclaim the space (default %(default)s)")
    sweeping.add_argument("--rerun", action="store_true", help="measure versions already measured again")
    sweeping.add_argument("--pip-args", default="", help="extra pip install arguments, written with =, e.g. "
                          "--pip-args='--index-url URL'")
    _add_threshold_option(sweeping)
    sweeping.add_argument("--png", metavar="PATH", help="also write the history chart")
    sweeping.set_defaults(handler=cmd_sweep)

    calibrating = commands.add_parser(
        "calibrate", help="measure this machine's noise per row once (an A/A of worker pairs) for later comparisons",
        description="Measures the rows as worker pairs of the same Python (an A/A: A and B alternate rounds) "
                    "and keeps each row's spread between pairs and between processes in the calibration file, "
                    "keyed by row, machine and torch version. Later comparisons of this machine use it: a "
                    "single-process compare gets a verdict, and a devicebench run of a few pairs the degrees of "
                    "freedom of many. Use the --round-time of the runs it will judge: --round-time 0 "
                    "calibrates plain pytest runs, as fresh processes one after another.")
    _add_process_options(
        calibrating, processes=None, output_dir="results/calibration",
        processes_help=f"worker pairs (default {CALIBRATION_PAIRS}, or as many as --budget allows); with "
                       f"--round-time 0, plain processes (default {CALIBRATION_PROCESSES})",
        env_help=argparse.SUPPRESS, name=time.strftime("calibration-%Y%m%d-%H%M%S"),
        name_help="file name prefix of the runs it keeps: OUTPUT_DIR/NAME-A.json and -B.json (with --round-time "
                  "0, NAME-plain.json)")
    calibrating.add_argument("--python", help="the Python to calibrate (default: this one)")
    calibrating.add_argument("--from-runs", nargs=2, metavar=("A_RUN", "B_RUN"),
                             help="measure nothing: keep the noise of an A/A already run (the two files of one "
                                  "devicebench run --env A=PY --env B=PY of the same Python)")
    calibrating.set_defaults(handler=cmd_calibrate)

    scaling = commands.add_parser(
        "scaling", help="what 2, 4 or 8 devices buy over one: data-parallel (DDP) launches, efficiency with its "
                        "interval",
        description="Launches every selected row with torchrun at each world size, one process per device, the "
                    "model wrapped in DistributedDataParallel (nccl on cuda, gloo on the cpu), the world sizes "
                    "taking turns, and reports total and per-device samples/s, scaling efficiency E(N) against "
                    "world size 1 with its 95% interval, the bytes a step all-reduces and the share of a round "
                    "spent in collectives.")
    scaling.add_argument("--world-sizes", type=_world_sizes, default=(1, 2), metavar="N,N,...",
                         help="ranks per launch, 1 included (default 1,2)")
    scaling.add_argument("--view", choices=("weak", "strong", "both"), default="weak",
                         help="weak: each rank the scale's batch and epoch; strong: the scale's batch and epoch "
                              "shared out (default %(default)s)")
    scaling.add_argument("--launches", type=int, default=3,
                         help="launches of each world size, one sample each (default %(default)s)")
    scaling.add_argument("--collective-timeout", type=_duration, default=300.0, metavar="TIME",
                         help="how long a rank waits for the others in a collective before the launch fails, naming "
                              "the rank that stopped answering (default 300s)")
    scaling.add_argument("--nodes", type=int, default=1, help="hosts taking part (torchrun's --nnodes; default 1)")
    scaling.add_argument("--node-rank", type=int, default=0, help="this host's place among --nodes (0 writes the "
                                                                  "file)")
    scaling.add_argument("--rendezvous", metavar="HOST:PORT",
                         help="with --nodes > 1: where the hosts meet (torchrun's c10d rendezvous endpoint)")
    scaling.add_argument("--name", default=time.strftime("scaling-%Y%m%d-%H%M%S"),
                         help="the file's name (default: scaling-<date>)")
    scaling.add_argument("--output-dir", default="results/scaling", help="where it goes (default %(default)s)")
    scaling.add_argument("row_arguments", nargs=argparse.REMAINDER,
                         help="after --: which rows, as for pytest benchmarks (--device cuda or cpu, --pipeline, "
                              "--scale, ...), plus -k and --workload")
    scaling.set_defaults(handler=cmd_scaling)

    peering = commands.add_parser(
        "peer", help="another project's own benchmark beside a tuned row, on the same GPU (timm, nanoGPT)",
        description="Alternates a peer's benchmark and the suite's tuned row of the same network as separate "
                    "processes, and writes both medians and their ratio. timm: timm's benchmark.py (resnet18 "
                    "inference at the row's image size and batch, mixed precision, channels_last, torch.compile) "
                    "beside resnet18_cifar. nanogpt: nanoGPT's bench.py (training, run from a copy of its folder "
                    "with its model sized as the scale's) beside char_gpt.")
    peering.add_argument("--peer", choices=("timm", "nanogpt"), default="timm",
                         help="whose benchmark (default %(default)s)")
    peering.add_argument("--script", required=True, metavar="PATH",
                         help="timm's benchmark.py, or nanoGPT's bench.py beside its model.py and configurator.py; "
                              "not shipped here")
    peering.add_argument("--machine", required=True, help="a name for this machine: the file goes to "
                                                          "results/reference/MACHINE/peer-PEER[-SCALE].json")
    peering.add_argument("-o", "--output", help="write the peer file here instead")
    peering.add_argument("--processes", type=int, default=2, help="processes of each side (default %(default)s)")
    peering.add_argument("--device", default="cuda")
    peering.add_argument("--scale", default="standard", help="standard (default), or gpt2 for nanogpt")
    peering.add_argument("--amp-dtype", default="bfloat16", choices=("bfloat16", "float16"),
                         help="timm's --amp-dtype: the tuned row's dtype on this GPU (default %(default)s)")
    peering.add_argument("--profile", action="store_true",
                         help="one more tuned process under torch.profiler: where the remaining time goes")
    peering.set_defaults(handler=cmd_peer)

    past = commands.add_parser("history", help="throughput per torch version, per machine and device")
    past.add_argument("dir", nargs="?", default="results", help="folder of saved runs (default results/)")
    _add_threshold_option(past)
    past.add_argument("--png", metavar="PATH", help="also write a line chart")
    past.add_argument("--fail-on-regression", action="store_true",
                      help="exit 1 when a step regressed, 2 when a step is inconclusive at the threshold")
    _add_calibration_option(past)
    past.set_defaults(handler=cmd_history)
    return top


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args, unknown = parser().parse_known_args(argv)
    if unknown:  # the likeliest slip: row options without the -- before them
        hint = ""
        if hasattr(args, "row_arguments") and "--" not in argv:
            hint = f"; row options (--device, --scale, -k, ...) go after --: devicebench {argv[0]} -- --device cpu"
        parser().error(f"unrecognized arguments: {' '.join(unknown)}{hint}")
    undo = signals.stop_like_ctrl_c()  # a run or sweep stopped by SIGTERM/SIGHUP keeps its finished pairs
    try:
        return args.handler(args)
    except DevicebenchError as error:
        print(f"devicebench: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        resumes = args.handler in (cmd_run, cmd_sweep, cmd_calibrate)  # the commands that keep finished work
        print("devicebench: interrupted" + ("; what finished is kept, and the same command resumes after it"
                                            if resumes else ""), file=sys.stderr)
        return 130
    finally:
        undo()
        machine_lock.release()  # a process that goes on (a notebook calling main) does not keep the machine


if __name__ == "__main__":
    sys.exit(main())
