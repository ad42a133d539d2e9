"""The ``devicebench`` command: ``info``, ``compare`` and ``history``. Benchmarks themselves run under pytest.

Exit codes: 0 ok; 1 a regression was found with ``--fail-on-regression``; 2 a usage or data error (the message
says what to fix).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from devicebench import compare, environment, history, results
from devicebench.errors import DevicebenchError


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
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    runs = results.load_runs(args.runs, Path(args.results_dir))
    tables = [table for table in compare.build_tables(runs, args.threshold)
              if args.workload in (None, table.workload) and args.pipeline in (None, table.pipeline)]
    print(compare.render(tables, markdown=args.markdown))
    if args.png:
        from devicebench import plots

        plots.compare_chart(tables, Path(args.png))
        print(f"chart written to {args.png}")
    found = compare.regressions(tables)
    if found:
        print(f"{len(found)} significant regression(s) beyond {args.threshold:.0%}:")
        for line in found:
            print(f"  {line}")
        if args.fail_on_regression:
            return 1
    elif args.fail_on_regression:
        print(f"no significant regression beyond {args.threshold:.0%}")
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    runs = results.load_runs([args.dir], Path(args.dir))
    lines = history.timelines(runs)
    text, found = history.render(lines, args.threshold)
    print(text)
    if args.png:
        from devicebench import plots

        plots.history_chart(lines, Path(args.png))
        print(f"chart written to {args.png}")
    for line in found:
        print(f"regression: {line}")
    return 1 if found and args.fail_on_regression else 0


def _threshold(text: str) -> float:
    value = float(text.rstrip("%")) / (100 if text.endswith("%") else 1)
    if not 0 <= value < 10:
        raise argparse.ArgumentTypeError(f"{text!r}: give a fraction like 0.05 or a percentage like 5%")
    return value


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="devicebench", description=__doc__.splitlines()[0])
    commands = top.add_subparsers(dest="command", required=True)

    info = commands.add_parser("info", help="versions, backends and which devices can run here")
    info.set_defaults(handler=cmd_info)

    comparison = commands.add_parser("compare", help="compare saved runs (files, folders or run ids)")
    comparison.add_argument("runs", nargs="+", metavar="RUN",
                            help="a saved JSON file, a folder of them, or a run id such as 0003 under results/")
    comparison.add_argument("--threshold", type=_threshold, default=compare.DEFAULT_THRESHOLD,
                            help="smallest change worth reporting (default 0.05 = 5%%)")
    comparison.add_argument("--workload", help="only this workload (e.g. mnist_mlp)")
    comparison.add_argument("--pipeline", help="only this pipeline (seed, resident or tuned)")
    comparison.add_argument("--markdown", action="store_true", help="print Markdown tables to paste into an issue")
    comparison.add_argument("--png", metavar="PATH", help="also write a throughput bar chart")
    comparison.add_argument("--fail-on-regression", action="store_true",
                            help="exit 1 when any row is significantly slower than the first run by more than the "
                                 "threshold (a CI gate)")
    comparison.add_argument("--results-dir", default="results", help=argparse.SUPPRESS)
    comparison.set_defaults(handler=cmd_compare)

    past = commands.add_parser("history", help="throughput per torch version, per machine and device")
    past.add_argument("dir", nargs="?", default="results", help="folder of saved runs (default results/)")
    past.add_argument("--threshold", type=_threshold, default=compare.DEFAULT_THRESHOLD)
    past.add_argument("--png", metavar="PATH", help="also write a line chart")
    past.add_argument("--fail-on-regression", action="store_true", help="exit 1 when a step regressed")
    past.set_defaults(handler=cmd_history)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.handler(args)
    except DevicebenchError as error:
        print(f"devicebench: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
