"""The ``devicebench`` command: info, run, sweep, compare, history and report. Benchmarks run under pytest;
``run`` starts several pytest processes and merges them.

Exit codes: 0 ok; 1 a regression was found with ``--fail-on-regression``; 2 a usage or data error, or a gate that
cannot judge (an unreadable run, no row in common with the baseline); the message says what to fix.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from devicebench import calibration, compare, environment, history, processes, results, signals, significance, sweep
from devicebench.errors import DevicebenchError, UsageError
from devicebench.processes import DEFAULT_ROUND_SECONDS
from devicebench.workloads.base import PIPELINES


class GateCannotJudge(DevicebenchError):
    """The regression gate has nothing it can judge: it fails (exit 2) rather than pass by default."""


def cmd_info(args: argparse.Namespace) -> int:
    """The "verify your environment" step of seed 000: versions, backends, and each device's status."""
    facts = environment.software_facts()
    width = max(map(len, facts))
    for key, value in facts.items():
        if key == "accelerators":
            value = ", ".join(f"{a['type']}: {a['name']}" + (f" ({a['memory_bytes'] / 2**30:.0f} GiB)"
                                                            if a.get("memory_bytes") else "") for a in value) or "none"
        print(f"{key.ljust(width)}  {value}")
    print()
    for name, status, detail in environment.device_table():
        print(f"{name.ljust(5)} {status.ljust(10)} {detail}")
    print()
    print(_calibrated_rows(calibration.Calibration.load(args.calibration), environment.machine_key()))
    return 0


def _calibrated_rows(found: calibration.Calibration, machine_key: tuple) -> str:
    """What ``info`` says about this machine's calibration (calibration.py)."""
    entries = found.rows_of(machine_key)
    if not entries:
        return (f"calibration: none for this machine in {found.path} (single-process comparisons claim only "
                f"changes beyond {significance.SINGLE_PROCESS_FLOOR:.0f}x; run devicebench calibrate -- ARGS)")
    lines = [f"calibration: {len(entries)} row(s) of this machine in {found.path}"]
    for entry in sorted(entries, key=lambda e: (e["torch_version"], e["test"])):
        pair = "-" if entry["pair_log_sd"] is None else f"{math.expm1(entry['pair_log_sd']):.1%}"
        process = "-" if entry["process_log_sd"] is None else f"{math.expm1(entry['process_log_sd']):.1%}"
        identity = entry["identity"]
        lines.append(f"    {entry['test']} · {identity['scale']} · torch {entry['torch_version']}: "
                     f"{entry['pairs']} pairs, spread between pairs {pair}{_split_of(entry)}, between processes "
                     f"{process} ({entry['measured'][:10]})")
    return "\n".join(lines)


def _split_of(entry: dict) -> str:
    """How a calibrated pair spread divides into what more rounds remove and what they do not (calibration.py),
    where the entry records its round noise."""
    noise = calibration.noise_of(entry)
    per_process = noise.per_process_variance()
    if per_process is None:
        return ""
    return (f" at {noise.rounds_per_worker} rounds ({math.expm1(math.sqrt(per_process)):.1%} per process; a round's "
            f"B/A varies {math.expm1(noise.round_log_sd):.1%})")


def cmd_calibrate(args: argparse.Namespace) -> int:
    """An A/A of worker pairs of this Python, its per-row noise kept in the calibration file (calibration.py)."""
    if args.env or args.until is not None:
        raise UsageError("devicebench calibrate runs one Python against itself (--python, default this one); "
                         "--env and --until belong to devicebench run")
    if args.from_runs:
        written = [Path(path) for path in args.from_runs]
        how = f"A/A runs {written[0].name}, {written[1].name}"
    else:
        python = args.python or sys.executable
        env_a, env_b = (processes.Environment(label, python) for label in ("A", "B"))
        pytest_args = _pytest_args(args)
        if args.round_time == 0 and not any(arg.startswith("--compile-cache") for arg in pytest_args):
            # For single-process comparisons: each worker compiles anew, as a plain pytest run does. Workers that
            # loaded kept code spread less than processes that compile (mnist_mlp tuned, 2-core VM: 3.2% between
            # kept-code workers, 1.21x between two plain runs of the same code).
            pytest_args = [*pytest_args, "--compile-cache", "fresh"]
        # With a --budget alone, as many pairs as fit (run's default of 5 pairs would stop it short).
        count = args.processes or (CALIBRATION_MAX_PAIRS if args.budget is not None else CALIBRATION_PAIRS)
        written = processes.run_interleaved([env_a, env_b], count, pytest_args, Path(args.output_dir),
                                            args.name, budget_seconds=args.budget, round_seconds=args.round_time,
                                            pin_rounds=args.pin_rounds == "pair")
        round_time = processes.DEFAULT_ROUND_SECONDS if args.round_time is None else args.round_time
        how = (f"devicebench calibrate, round time {round_time:g}s: "
               f"{' '.join(pytest_args)} (runs {written[0].name}, {written[1].name})")
    first, second = (results.load_run(path) for path in written)
    if first is None or second is None:
        raise UsageError(f"{', '.join(map(str, written))}: could not be read as devicebench runs (see above)")
    if not any(row.pairs for row in first.rows):
        raise UsageError(f"{written[0]}: not a run of worker pairs; calibrate from the two runs of one "
                         f"devicebench run --env A=PY --env B=PY (the same Python twice)")
    found = calibration.Calibration.load(args.calibration)
    added = found.add_explained(first, second, how)
    if not added:
        raise DevicebenchError("the A/A runs have no rows in common with worker pairs: nothing to calibrate")
    path = found.save()
    print(f"calibration of {len(added)} row(s) written to {path}:")
    for entry, said in added:
        print(f"    {entry['test']}: {said}")
    print(_calibrated_rows(found, first.machine_key).split("\n", 1)[1])
    return 0


CALIBRATION_PAIRS = 6  # devicebench calibrate's worker pairs when neither --processes nor --budget is given
CALIBRATION_MAX_PAIRS = 100  # with --budget alone: the budget decides


def cmd_compare(args: argparse.Namespace) -> int:
    if args.fail_on_regression and args.view == "devices":
        raise UsageError("--fail-on-regression needs the change view: a slower device is not a regression")
    # A gate never skips a file it cannot read: judging what is left would pass a run it never saw.
    runs = results.load_runs(args.runs, Path(args.results_dir), strict=args.fail_on_regression)
    view, tables = compare.build_tables(runs, args.threshold, args.view, args.baseline_device,
                                        calibration.Calibration.load(args.calibration))
    tables = [table for table in tables
              if args.workload in (None, table.workload) and args.pipeline in (None, table.pipeline)]
    if args.details or args.markdown:
        print(compare.render(view, tables, markdown=args.markdown))
    else:
        print(compare.render_compact(view, tables, runs, args.threshold))
    if args.png:
        from devicebench import plots

        plots.compare_chart(tables, Path(args.png))
        print(f"chart written to {args.png}")
    if args.fail_on_regression:
        judged = [verdict for table in tables for verdict in table.verdicts if verdict is not None]
        if view != "change" or not judged:
            raise GateCannotJudge(
                "--fail-on-regression: no row of the later runs matches a row of the baseline run (same workload "
                "version, pipeline, scale, device and options), so there is nothing to judge and the gate fails. "
                "Compare runs of the same experiment: re-measure the baseline with this devicebench, or see the "
                "notes above for what differs")
    if view != "change":
        return 0
    for line in compare.inconclusive(tables):
        print(f"inconclusive at {args.threshold:.0%}: {line}")
    for line in compare.uncorrected_regressions(tables):
        print(f"significant alone, not gated on: {line}")
    found = compare.regressions(tables) + compare.count_regressions(tables, args.threshold)
    if found:
        print(f"{len(found)} significant regression(s) beyond {args.threshold:.0%}:")
        for line in found:
            print(f"  {line}")
        return 1 if args.fail_on_regression else 0
    if args.fail_on_regression:
        print(f"no significant regression beyond {args.threshold:.0%}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from devicebench import report

    runs = results.load_runs(args.runs, Path(args.results_dir))
    path = report.write_report(runs, Path(args.output), args.threshold, calibration.Calibration.load(args.calibration))
    print(f"report written to {path} ({path.stat().st_size / 2**20:.1f} MiB, opens offline)")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    environments = [processes.parse_environment(text) for text in args.env]
    output_dir = Path(args.output_dir) / args.name
    runs, skipped = sweep.run_sweep(args.torch, args.processes, _pytest_args(args), output_dir,
                                    Path(args.envs_dir).expanduser(), args.name, rerun=args.rerun,
                                    pip_args=args.pip_args.split(), environments=environments,
                                    until=_until_target(args.until), budget_seconds=args.budget,
                                    round_seconds=args.round_time, pin_rounds=args.pin_rounds == "pair",
                                    calibration=calibration.Calibration.load(args.calibration))
    for skip in skipped:
        print(f"skipped torch {skip.version}: {skip.reason}")
    measured = [run for run in runs if run.exists()]
    if measured:
        print(f"\nhistory of {output_dir} (each step judged across processes):\n")
        return cmd_history(argparse.Namespace(dir=str(output_dir), threshold=args.threshold, png=args.png,
                                              fail_on_regression=False, calibration=args.calibration))
    return 1 if skipped else 0


def _pytest_args(args: argparse.Namespace) -> list[str]:
    return args.pytest_args[1:] if args.pytest_args[:1] == ["--"] else args.pytest_args


def cmd_run(args: argparse.Namespace) -> int:
    environments = [processes.parse_environment(text) for text in args.env] or \
        [processes.Environment("current", sys.executable)]
    processes.run_interleaved(environments, args.processes, _pytest_args(args), Path(args.output_dir), args.name,
                              until=_until_target(args.until), budget_seconds=args.budget,
                              round_seconds=args.round_time, calibration=calibration.Calibration.load(args.calibration),
                              pin_rounds=args.pin_rounds == "pair")
    return 0


def cmd_peer(args: argparse.Namespace) -> int:
    """timm's own ResNet18 benchmark beside the tuned row, on the same GPU, in one call (peer.py)."""
    from devicebench import peer

    output = Path(args.output or f"results/reference/{args.machine}/peer-timm.json")
    peer.run_peer(Path(args.script), output, args.processes, args.device, args.scale, args.amp_dtype, args.profile)
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    runs = results.load_runs([args.dir], Path(args.dir))
    lines = history.timelines(runs, calibration.Calibration.load(args.calibration))
    text, found = history.render(lines, args.threshold)
    print(text)
    if args.png:
        from devicebench import plots

        plots.history_chart(lines, Path(args.png), args.threshold)
        print(f"chart written to {args.png}")
    for line in found:
        print(line)
    regressed = any(line.startswith("regression") for line in found)
    return 1 if regressed and args.fail_on_regression else 0


def _threshold(text: str) -> float:
    """``5%`` or ``0.05``; a bare number above 1 is refused rather than read as a multiple (``5`` = 500%)."""
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < 1 or (not text.endswith("%") and value >= 1):
        raise argparse.ArgumentTypeError(f"{text!r}: give a percentage like 5% or a fraction like 0.05")
    return value


def _until_part(text: str) -> tuple[str | None, float]:
    """One ``--until``: ``5%`` for every row, or ``seed=10%`` for one pipeline's rows."""
    pipeline, _, size = text.rpartition("=")
    if pipeline and pipeline not in PIPELINES:
        raise argparse.ArgumentTypeError(f"{text!r}: {pipeline!r} is not a pipeline; give one of "
                                         f"{', '.join(PIPELINES)}, as in seed=10%")
    value = _threshold(size)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a size above zero, such as 5%")
    return pipeline or None, value


def _until_target(parts: list[tuple[str | None, float]] | None) -> processes.UntilTarget | None:
    """The ``--until`` options as one target: the size for every row and the sizes asked of single pipelines."""
    if not parts:
        return None
    defaults = [value for pipeline, value in parts if pipeline is None]
    if len(defaults) != 1:
        raise UsageError("--until: give one size for every row (e.g. --until 5%), and PIPELINE=SIZE for a "
                         "pipeline that should differ (e.g. --until seed=10%)")
    by_pipeline = {pipeline: value for pipeline, value in parts if pipeline is not None}
    return processes.UntilTarget(defaults[0], tuple(sorted(by_pipeline.items())))


def _duration(text: str) -> float:
    """``90s``, ``10m``, ``1h30m`` or a bare number of seconds, as seconds."""
    import re

    match = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", text)
    if not text.strip() or match is None:
        raise argparse.ArgumentTypeError(f"{text!r}: give a time such as 10m, 90s or 1h30m")
    hours, minutes, seconds = (float(part) if part else 0.0 for part in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a time longer than zero, such as 10m")
    return total


def _round_time(text: str) -> float:
    """A --round-time: a time as _duration reads it, or 0 for the scale's rounds alone."""
    return 0.0 if text.strip() in ("0", "0s") else _duration(text)


def _add_process_options(parser: argparse.ArgumentParser, *, processes: int | None, output_dir: str,
                         processes_help: str, env_help: str, name: str, name_help: str) -> None:
    """The options of the commands that run the suite as several processes (run, sweep)."""
    parser.add_argument("--processes", type=int, default=processes, help=processes_help)
    parser.add_argument("--until", type=_until_part, action="append", metavar="[PIPELINE=]SIZE",
                        help="with two or more --env: add worker pairs until every row could detect a change of "
                             "this size (e.g. 5%%), each environment against the first, or --budget is spent; a "
                             "row that got there is left out of later pairs. Repeat with PIPELINE=SIZE to ask "
                             "another size of one pipeline's rows, e.g. --until 5%% --until seed=10%%")
    parser.add_argument("--budget", type=_duration, metavar="TIME",
                        help="stop adding worker pairs once this much time is measured (e.g. 10m, 1h); a pair is "
                             "started only if it fits")
    parser.add_argument("--round-time", type=_round_time, metavar="TIME",
                        help="with two or more --env: each worker times every row's rounds for about this long "
                             f"(default {DEFAULT_ROUND_SECONDS:.0f}s), at least the scale's rounds: "
                             "more rounds for fast rows, a tighter estimate per pair; 0: the scale's rounds, as "
                             "a plain pytest run times them (calibrate so for single-process comparisons)")
    parser.add_argument("--pin-rounds", choices=("pair", "off"), default="pair",
                        help="with two or more --env: pair (default) runs the accelerator rows' rounds of both "
                             "workers of a pair on one core, another each pair, so that what a core is worth "
                             "cancels in their ratio (cpu rows are never pinned); off leaves them where the OS "
                             "puts them (a wrapper's own DEVICEBENCH_ROUND_CORE still applies)")
    parser.add_argument("--env", action="append", default=[], metavar="LABEL=PYTHON", help=env_help)
    parser.add_argument("--name", default=name, help=name_help)
    parser.add_argument("--output-dir", default=output_dir, help="where the runs go (default %(default)s)")
    _add_calibration_option(parser)
    parser.add_argument("pytest_args", nargs=argparse.REMAINDER,
                        help="after --: options for pytest benchmarks, e.g. -- --device cpu --scale quick")


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
    comparison.add_argument("--threshold", type=_threshold, default=significance.DEFAULT_THRESHOLD,
                            help="smallest change worth reporting: 5%% or 0.05 (the default)")
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
                            help="exit 1 when any row is significantly slower than that row in the first run by "
                                 "more than the threshold (a CI gate; change view only)")
    comparison.add_argument("--results-dir", default="results", help=argparse.SUPPRESS)
    _add_calibration_option(comparison)
    comparison.set_defaults(handler=cmd_compare)

    reporting = commands.add_parser("report", help="one self-contained HTML report of saved runs (opens offline)")
    reporting.add_argument("runs", nargs="+", metavar="RUN", help="saved JSON files, folders or run ids")
    reporting.add_argument("-o", "--output", default="report.html", help="the HTML file (default %(default)s)")
    reporting.add_argument("--threshold", type=_threshold, default=significance.DEFAULT_THRESHOLD)
    reporting.add_argument("--results-dir", default="results", help=argparse.SUPPRESS)
    _add_calibration_option(reporting)
    reporting.set_defaults(handler=cmd_report)

    run = commands.add_parser(
        "run", help="run the benchmarks in several fresh processes (alternating environments) and merge them",
        description="Runs `pytest benchmarks PYTEST_ARGS` as several processes per environment and writes one run "
                    "per environment with every process's rounds. With two or more --env, the processes are worker "
                    "pairs: one live worker per environment, their rounds alternated (A B B A ...), judged pair by "
                    "pair (significance.py). Cost: one pytest run per process and environment.")
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
        description="Builds or reuses a virtual environment per torch version (with its torchvision and this "
                    "checkout), runs `pytest benchmarks PYTEST_ARGS` in each as --processes processes, alternating "
                    "the versions, saves one run per version and prints `devicebench history` of them.")
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
    sweeping.add_argument("--threshold", type=_threshold, default=significance.DEFAULT_THRESHOLD)
    sweeping.add_argument("--png", metavar="PATH", help="also write the history chart")
    sweeping.set_defaults(handler=cmd_sweep)

    calibrating = commands.add_parser(
        "calibrate", help="measure this machine's noise per row once (an A/A of worker pairs) for later comparisons",
        description="Runs `pytest benchmarks PYTEST_ARGS` as worker pairs of the same Python (an A/A: A and B "
                    "alternate rounds) and keeps each row's spread between pairs and between processes in the "
                    "calibration file, keyed by row, machine and torch version. Later comparisons of this machine "
                    "use it: a single-process compare gets a verdict, and a devicebench run of a few pairs the "
                    "degrees of freedom of many. Use the --round-time of the runs it will judge.")
    _add_process_options(
        calibrating, processes=None, output_dir="results/calibration",
        processes_help=f"worker pairs (default {CALIBRATION_PAIRS}, or as many as --budget allows)",
        env_help=argparse.SUPPRESS, name=time.strftime("calibration-%Y%m%d-%H%M%S"),
        name_help="file name prefix of the A/A runs it keeps: OUTPUT_DIR/NAME-A.json and -B.json")
    calibrating.add_argument("--python", help="the Python to calibrate (default: this one)")
    calibrating.add_argument("--from-runs", nargs=2, metavar=("A_RUN", "B_RUN"),
                             help="measure nothing: keep the noise of an A/A already run (the two files of one "
                                  "devicebench run --env A=PY --env B=PY of the same Python)")
    calibrating.set_defaults(handler=cmd_calibrate)

    peering = commands.add_parser(
        "peer", help="timm's own resnet18 benchmark beside the tuned resnet18_cifar row, on the same GPU",
        description="Alternates timm's benchmark.py (inference, the tuned row's image size, batch, 10 classes, "
                    "mixed precision, channels_last, torch.compile) and the suite's resnet18_cifar tuned row as "
                    "separate processes, and writes both medians and their ratio.")
    peering.add_argument("--script", required=True, metavar="PATH",
                         help="timm's benchmark.py (huggingface/pytorch-image-models); not shipped here")
    peering.add_argument("--machine", required=True, help="a name for this machine: the file goes to "
                                                          "results/reference/MACHINE/peer-timm.json")
    peering.add_argument("-o", "--output", help="write the peer file here instead")
    peering.add_argument("--processes", type=int, default=2, help="processes of each side (default %(default)s)")
    peering.add_argument("--device", default="cuda")
    peering.add_argument("--scale", default="standard")
    peering.add_argument("--amp-dtype", default="bfloat16", choices=("bfloat16", "float16"),
                         help="timm's --amp-dtype: the tuned row's dtype on this GPU (default %(default)s)")
    peering.add_argument("--profile", action="store_true",
                         help="one more tuned process under torch.profiler: where the remaining time goes")
    peering.set_defaults(handler=cmd_peer)

    past = commands.add_parser("history", help="throughput per torch version, per machine and device")
    past.add_argument("dir", nargs="?", default="results", help="folder of saved runs (default results/)")
    past.add_argument("--threshold", type=_threshold, default=significance.DEFAULT_THRESHOLD)
    past.add_argument("--png", metavar="PATH", help="also write a line chart")
    past.add_argument("--fail-on-regression", action="store_true", help="exit 1 when a step regressed")
    _add_calibration_option(past)
    past.set_defaults(handler=cmd_history)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    undo = signals.stop_like_ctrl_c()  # a run or sweep stopped by SIGTERM/SIGHUP keeps its finished pairs
    try:
        return args.handler(args)
    except DevicebenchError as error:
        print(f"devicebench: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("devicebench: interrupted; what finished is kept, and the same command resumes after it",
              file=sys.stderr)
        return 130
    finally:
        undo()


if __name__ == "__main__":
    sys.exit(main())
