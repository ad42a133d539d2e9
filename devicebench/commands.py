"""What each ``devicebench`` command does (cli.py declares their options)."""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import replace
from pathlib import Path

from devicebench import calibration, compare, coordinator, environment, gate, history, host, machine_lock, \
    options, results, rows, significance, sweep
from devicebench.errors import DevicebenchError, UsageError
from devicebench.noise import noise_of
from devicebench.threshold import DEFAULT_THRESHOLD, Threshold
from devicebench.until import UntilTarget


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
        elif key == "host_memory":
            value = host.describe_memory(value)
        print(f"{key.ljust(width)}  {value}")
    print()
    for name, status, detail in environment.device_table():
        print(f"{name.ljust(5)} {status.ljust(10)} {detail}")
    print()
    print(_calibrated_rows(calibration.Calibration.load(args.calibration), environment.machine_key(),
                           facts["host_memory"]))
    return 0


def _calibrated_rows(found: calibration.Calibration, machine_key: tuple,
                     host_memory: dict | None = None) -> str:
    """What ``info`` says about this machine's calibration (calibration.py), marking the entries made under other
    host memory settings than ``host_memory`` (not used here now)."""
    entries = found.rows_of(machine_key)
    if not entries:
        return (f"calibration: none for this machine in {found.path} (single-process comparisons claim only "
                f"changes beyond {significance.SINGLE_PROCESS_FLOOR:.0f}x; run devicebench calibrate -- ARGS)")
    lines = [f"calibration: {len(entries)} row(s) of this machine in {found.path}"]
    for entry in sorted(entries, key=lambda e: (e["torch_version"], e["test"])):
        pair = "-" if entry["pair_log_sd"] is None else f"{math.expm1(entry['pair_log_sd']):.1%}"
        process = "-" if entry["process_log_sd"] is None else f"{math.expm1(entry['process_log_sd']):.1%}"
        identity = entry["identity"]
        measured = (f"{entry['pairs']} pairs, spread between pairs {pair}{_split_of(entry)}{_three_pairs(entry)}"
                    if entry["pairs"] else f"{entry.get('processes', 0)} plain processes")
        differences = host.memory_differences(entry.get("host_memory"), host_memory)
        unused = (f"; not used under this host's memory settings: {'; '.join(differences)}" if differences
                  else "")
        lines.append(f"    {entry['test']} · {identity['scale']} · torch {entry['torch_version']}: {measured}, "
                     f"between processes {process} ({entry['measured'][:10]}{unused})")
    return "\n".join(lines)


def _three_pairs(entry: dict) -> str:
    """What the entry is worth to a later run: the smallest change three pairs pooled with it could detect, were
    their spread the calibrated one (a calibration made on a busy machine shows here as a large figure)."""
    if entry["pair_log_sd"] is None or not entry.get("pair_df"):
        return ""
    factor = significance.detection_factor(2 + entry["pair_df"])
    return f"; 3 pairs pooled with it detect {math.expm1(factor * entry['pair_log_sd'] / math.sqrt(3)):.1%}"


def _split_of(entry: dict) -> str:
    """How a calibrated pair spread divides into what more rounds remove and what they do not (calibration.py),
    where the entry records its round noise."""
    noise = noise_of(entry)
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
    elif args.round_time == 0:
        return _calibrate_plain(args)
    else:
        python = args.python or sys.executable
        env_a, env_b = (coordinator.Environment(label, python) for label in ("A", "B"))
        # With a --budget alone, as many pairs as fit (run's default of 5 pairs would stop it short).
        count = args.processes or (CALIBRATION_MAX_PAIRS if args.budget is not None else CALIBRATION_PAIRS)
        written = coordinator.run([env_a, env_b], count, plan_of(args), Path(args.output_dir), args.name,
                                  budget_seconds=args.budget, round_seconds=args.round_time,
                                  pin_rounds=args.pin_rounds != "off")
        if len(written) < 2:
            raise DevicebenchError("no row ran in both environments (the reasons are above): nothing to calibrate")
        round_time = coordinator.DEFAULT_ROUND_SECONDS if args.round_time is None else args.round_time
        how = (f"devicebench calibrate, round time {round_time:g}s: "
               f"{' '.join(row_arguments(args))} (runs {written[0].name}, {written[1].name})")
    first, second = (results.load_run(path) for path in written)
    if first is None or second is None:
        raise UsageError(f"{', '.join(map(str, written))}: could not be read as devicebench runs (see above)")
    if any(row.extra["processes"] == other.extra["processes"] for row in first.rows for other in second.rows):
        raise UsageError(f"{written[0]} and {written[1]} hold the same measurements (one run twice, or a copy): "
                         f"an A/A of a run against itself has no spread to calibrate; give the two runs of one "
                         f"devicebench run --env A=PY --env B=PY")
    if not any(row.pairs for row in first.rows):
        raise UsageError(f"{written[0]}: not a run of worker pairs; calibrate from the two runs of one "
                         f"devicebench run --env A=PY --env B=PY (the same Python twice)")
    found = calibration.Calibration.load(args.calibration)
    added = found.add_explained(first, second, how)
    if not added:
        raise DevicebenchError("the A/A runs have no rows in common with worker pairs: nothing to calibrate")
    return _kept(found, added, first.machine_key)


def _calibrate_plain(args: argparse.Namespace) -> int:
    """``--round-time 0``: fresh processes one after another, timed as plain pytest runs are (the scale's rounds,
    left where the OS puts them, each compiling its own code), and the spread of their medians kept."""
    if args.pin_rounds == "pair":
        raise UsageError("--pin-rounds pair belongs to worker pairs; --round-time 0 calibrates plain processes, "
                         "whose rounds are not pinned")
    count = args.processes or (CALIBRATION_MAX_PAIRS if args.budget is not None else CALIBRATION_PROCESSES)
    if count < 2:
        raise UsageError("--processes: a spread between processes needs two at least "
                         f"({CALIBRATION_PROCESSES} by default)")
    env = coordinator.Environment("plain", args.python or sys.executable)
    written = coordinator.run([env], count, plan_of(args), Path(args.output_dir), args.name,
                              budget_seconds=args.budget)
    if not written:
        raise DevicebenchError("no row ran (the reasons are above): nothing to calibrate")
    run = results.load_run(written[0])
    if run is None:
        raise UsageError(f"{written[0]}: could not be read as a devicebench run (see above)")
    how = f"devicebench calibrate --round-time 0: {' '.join(row_arguments(args))} (run {written[0].name})"
    found = calibration.Calibration.load(args.calibration)
    added = [(entry, said if entry["process_df"] >= significance.MIN_PROCESS_DF else
              f"{said}; {entry['processes']} processes so far, and a single-process verdict needs "
              f"{significance.MIN_PROCESS_DF + 1}: run it again and it pools")
             for entry, said in found.add_processes(run, how)]
    if not added:
        raise DevicebenchError(f"{written[0]}: no row was measured in two processes or more: nothing to calibrate")
    return _kept(found, added, run.machine_key)


def _kept(found: calibration.Calibration, added: list[tuple[dict, str]], machine_key: tuple) -> int:
    path = found.save()
    print(f"calibration of {len(added)} row(s) written to {path}:")
    for entry, said in added:
        print(f"    {entry['test']}: {said}")
    print(_calibrated_rows(found, machine_key).split("\n", 1)[1])
    return 0


CALIBRATION_PAIRS = 6  # devicebench calibrate's worker pairs when neither --processes nor --budget is given
# ... and its plain processes with --round-time 0: 11 degrees of freedom, more than significance.MIN_PROCESS_DF
CALIBRATION_PROCESSES = 12
CALIBRATION_MAX_PAIRS = 100  # with --budget alone: the budget decides


def cmd_compare(args: argparse.Namespace) -> int:
    if args.fail_on_regression and args.view == "devices":
        raise UsageError("--fail-on-regression needs the change view: a slower device is not a regression")
    # A gate never skips a file it cannot read: judging what is left would pass a run it never saw.
    runs = results.load_runs(args.runs, Path(args.results_dir), strict=args.fail_on_regression)
    threshold = threshold_of(args.threshold)
    asked = "change" if args.fail_on_regression and args.view == "auto" else args.view  # a gate judges changes
    view, tables = compare.build_tables(runs, threshold, asked, args.baseline_device,
                                        calibration.Calibration.load(args.calibration))
    tables = [table for table in tables
              if args.workload in (None, table.workload) and args.pipeline in (None, table.pipeline)]
    if args.details or args.markdown:
        print(compare.render(view, tables, markdown=args.markdown))
    else:
        print(compare.render_compact(view, tables, runs, threshold))
    if args.png:
        from devicebench import plots

        plots.compare_chart(tables, Path(args.png))
        print(f"chart written to {args.png}")
    if args.fail_on_regression:
        judged = [verdict for table in tables for verdict in table.verdicts if verdict is not None]
        if view != "change" or not judged:
            workloads = [sorted({row.workload for row in run.rows}) for run in runs]
            apart = ("the runs measured different workloads (" + "; ".join(", ".join(w) for w in workloads) + ")"
                     if len(runs) > 1 and not set(workloads[0]) & {name for later in workloads[1:] for name in later}
                     else "see the notes above for what differs")
            raise GateCannotJudge(
                "--fail-on-regression: no row of the later runs matches a row of the baseline run (same workload "
                "version, pipeline, scale, device and options), so there is nothing to judge and the gate fails. "
                f"Compare runs of the same experiment: {apart}")
    if view != "change":
        return 0
    for line in gate.host_memory_notes(runs):
        print(line)
    elsewhere = gate.across_machines(tables)
    itself = gate.against_itself(tables)
    missing = gate.missing_rows(tables, runs)
    for line in elsewhere + itself:
        print(line)
    if missing:
        print(f"{len(missing)} row(s) of the baseline not in a later run:")
        for line in missing:
            print(f"  {line}")
    unjudged = gate.inconclusive(tables)
    for line in unjudged:
        print(f"inconclusive {line}")
    for line in gate.uncorrected_regressions(tables):
        print(f"significant alone, not gated on: {line}")
    found = gate.regressions(tables) + gate.count_regressions(tables, threshold)
    if found:
        print(f"{len(found)} significant regression(s) beyond {threshold.describe()}:")
        for line in found:
            print(f"  {line}")
    if args.fail_on_regression and elsewhere:
        raise GateCannotJudge(
            "--fail-on-regression: the runs come from different machines (above), whose own difference no spread "
            "of one machine's processes measures, so the gate cannot judge a change of code between them. Gate "
            "runs of one machine (devicebench run --env old=PY --env new=PY measures both sides on one, in turns); "
            f"where one machine's hostname changes from run to run (a container's), name it: "
            f"{environment.MACHINE_VARIABLE}=NAME")
    if args.fail_on_regression and itself:
        raise GateCannotJudge("--fail-on-regression: a later run holds the baseline's own measurements (above), so "
                              "it would pass whatever the code did. Give the gate the baseline and a new run")
    if found:
        return 1 if args.fail_on_regression else 0
    if args.fail_on_regression and missing:
        raise GateCannotJudge(
            f"--fail-on-regression: {len(missing)} row(s) of the baseline are not in a later run (above: cut off, "
            f"failed or skipped there, or measured as another experiment), and a row the gate never saw cannot pass. "
            f"Measure them again alike, or gate only the rows both have (--workload, --pipeline)")
    if args.fail_on_regression and unjudged:
        raise GateCannotJudge(
            f"--fail-on-regression: {len(unjudged)} row(s) inconclusive (above): their data could not have seen a "
            f"{threshold.describe()} change, so the gate cannot pass them. Measure them in more worker pairs "
            f"(devicebench run --env old=PY --env new=PY {threshold.option('--until')}), this machine's "
            f"calibration (devicebench calibrate), or a --threshold above their smallest detectable change; or gate "
            f"fewer rows (--workload, --pipeline)")
    if args.fail_on_regression:
        print(f"no significant regression beyond {threshold.describe()}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from devicebench import report

    runs = results.load_runs(args.runs, Path(args.results_dir))
    path = report.write_report(runs, Path(args.output), threshold_of(args.threshold),
                               calibration.Calibration.load(args.calibration))
    print(f"report written to {path} ({path.stat().st_size / 2**20:.1f} MiB, opens offline)")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    environments = [coordinator.parse_environment(text) for text in args.env]
    if environments:
        machine_lock.hold(f"devicebench sweep --name {args.name}")
        check_environments(environments)
    output_dir = Path(args.output_dir) / args.name
    runs, skipped = sweep.run_sweep(args.torch, args.processes, plan_of(args), output_dir,
                                    Path(args.envs_dir).expanduser(), args.name, rerun=args.rerun,
                                    pip_args=args.pip_args.split(), environments=environments,
                                    until=until_target(args.until), budget_seconds=args.budget,
                                    round_seconds=args.round_time, pin_rounds=args.pin_rounds != "off",
                                    calibration=calibration.Calibration.load(args.calibration))
    for skip in skipped:
        print(f"skipped torch {skip.version}: {skip.reason}")
    measured = [run for run in runs if run.exists()]
    if measured:
        print(f"\nhistory of {output_dir} (each step judged across processes):\n")
        # Judged at the sizes the sweep was run to (--until, checked above), where no --threshold says otherwise.
        return cmd_history(argparse.Namespace(dir=str(output_dir), threshold=args.threshold or args.until, png=args.png,
                                              fail_on_regression=False, calibration=args.calibration))
    return 1 if skipped else 0


def row_arguments(args: argparse.Namespace) -> list[str]:
    """The row options given after ``--``."""
    return args.row_arguments[1:] if args.row_arguments[:1] == ["--"] else args.row_arguments


def row_parser() -> argparse.ArgumentParser:
    """The row options a run takes after ``--``: those of ``pytest benchmarks`` (options.py), -k and --workload."""
    found = argparse.ArgumentParser(prog="devicebench run ... --",
                                    description="the rows a run measures, and how (the options of pytest benchmarks)")
    options.add_options(found.add_argument)
    found.add_argument("-k", dest="keyword", metavar="EXPRESSION",
                       help="only rows whose name matches, as pytest's -k: words joined by and, or, not")
    found.add_argument("--workload", help="comma-separated workloads (default: all)")
    return found


def plan_of(args: argparse.Namespace) -> coordinator.Plan:
    """What a run measures, from the row options after ``--``."""
    given = row_arguments(args)
    values, unknown = row_parser().parse_known_args(given)
    if unknown:
        raise UsageError(f"{' '.join(unknown)}: not a row option of devicebench; after -- give the options of "
                         f"pytest benchmarks (--device, --pipeline, --scale, --data, ...), -k or --workload")
    chosen = options.RowOptions.read(vars(values).get)
    workloads = [name.strip() for name in (values.workload or "").split(",") if name.strip()]
    if chosen.data_dir:  # workers may start elsewhere: paths are made absolute here
        chosen = replace(chosen, data_dir=str(Path(chosen.data_dir).resolve()))
    if chosen.profile_dir:
        chosen = replace(chosen, profile_dir=str(Path(chosen.profile_dir).resolve()))
    if chosen.weights:
        chosen = replace(chosen, weights=str(Path(chosen.weights).resolve()))
    return coordinator.Plan(tuple(rows.select(chosen, values.keyword, workloads)), chosen)


def cmd_run(args: argparse.Namespace) -> int:
    environments = [coordinator.parse_environment(text) for text in args.env] or \
        [coordinator.Environment("current", sys.executable)]
    if args.env:
        machine_lock.hold(f"devicebench run --name {args.name}")  # before the probes: refused, nothing runs
        check_environments(environments)
    written = coordinator.run(environments, args.processes, plan_of(args), Path(args.output_dir), args.name,
                    until_target=until_target(args.until), budget_seconds=args.budget,
                    round_seconds=args.round_time, calibration=calibration.Calibration.load(args.calibration),
                    pin_rounds=args.pin_rounds != "off")
    if not written:
        raise DevicebenchError("no row ran in any environment (the reasons are above): no run was written")
    return 0


def check_environments(environments: list[coordinator.Environment], echo=print) -> None:
    """Refuse, before anything is measured, an environment whose Python cannot run a worker, naming the fix that
    keeps its torch; say which torch each holds and which rows will skip there (a torchvision of another torch); note
    two environments of one torch (an upgrade whose two sides hold one torch is an A/A: ``pip install`` of the
    requirements may have replaced the torch meant)."""
    from concurrent.futures import ThreadPoolExecutor

    from devicebench import worker

    pythons = list(dict.fromkeys(env.python for env in environments))
    with ThreadPoolExecutor(len(pythons)) as pool:  # a probe imports torch: seconds each
        found = dict(zip(pythons, pool.map(worker.probe, pythons)))
    for env in environments:
        probe = found[env.python]
        if probe.missing:
            release = probe.torch and probe.torch.split("+")[0]
            vision = (release and sweep.torchvision_for(release)) or "its pair (devicebench/torch_versions.toml)"
            pins = [f"torch=={release or 'VERSION'}", f"torchvision=={vision}"]
            install = " ".join(f'"{name}"' for name in pins + sweep.requirements())
            raise UsageError(
                f"--env {env.label}: {env.python} cannot run devicebench's workers: {'; '.join(probe.missing)}. "
                f"Install devicebench's requirements there, naming {'its' if release else 'the'} torch so pip "
                f"keeps it: {env.python} -m pip install {install}; or let devicebench sweep --torch VERSION build "
                f"the environment")
    echo("environments: " + ", ".join(f"{env.label} = torch {found[env.python].torch} ({env.python})"
                                      for env in environments))
    for env in environments:
        if found[env.python].rows_skip:
            echo(f"note: in {env.label} the rows of workloads that need {'; '.join(found[env.python].rows_skip)} "
                 f"will skip, saying so")
    for first, second in zip(environments, environments[1:]):
        one, other = found[first.python], found[second.python]
        if one.prefix != other.prefix and one.torch == other.torch:
            echo(f"note: {first.label} and {second.label} hold the same torch {one.torch}, so this is an A/A; if one "
                 f"was meant to be another release, pip may have replaced it (check with PYTHON -m pip show torch)")


def cmd_scaling(args: argparse.Namespace) -> int:
    """Data-parallel launches at each world size, and the efficiency each buys (scaling.py)."""
    from devicebench import scaling

    if args.launches < 1:
        raise UsageError(f"--launches {args.launches}: give 1 or more (3 for an interval)")
    if args.nodes < 1 or not 0 <= args.node_rank < args.nodes:
        raise UsageError(f"--nodes {args.nodes} --node-rank {args.node_rank}: a node rank is from 0 to nodes - 1")
    if args.nodes > 1 and not args.rendezvous:
        raise UsageError("--nodes above 1 needs --rendezvous HOST:PORT, the same on every host")
    views = ("weak", "strong") if args.view == "both" else (args.view,)
    import torch

    if not any(argument.startswith("--device") for argument in row_arguments(args)):
        # one device type a launch: the GPUs where there are some, else the cpu
        args.row_arguments = [*row_arguments(args), "--device", "cuda" if torch.cuda.is_available() else "cpu"]
    run = scaling.runnable(scaling.Scaling(plan_of(args), args.world_sizes, views, args.launches,
                                           args.collective_timeout,
                                           scaling.Topology(args.nodes, args.node_rank, args.rendezvous)))
    scaling.check(run, torch.cuda.device_count() if torch.cuda.is_available() else 0)
    output = Path(args.output_dir) / f"{args.name}.json"
    machine_lock.hold(f"devicebench scaling --name {args.name}")
    print(f"devicebench scaling: {len(run.plan.rows)} row(s) at world sizes "
          f"{', '.join(map(str, run.world_sizes))}, {' and '.join(views)} view, {args.launches} launch(es) each; "
          f"writing {output}")
    scaling.run(run, output)
    return 0


def cmd_peer(args: argparse.Namespace) -> int:
    """A peer's own benchmark beside the tuned row of the same network, on the same GPU, in one call (peer.py)."""
    from devicebench import peer

    output = Path(args.output or f"results/reference/{args.machine}/{peer.peer_file_name(args.peer, args.scale)}")
    peer.run_peer(Path(args.script), output, args.processes, args.device, args.scale, args.amp_dtype, args.profile,
                  peer_name=args.peer)
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    runs = results.load_runs([args.dir], Path(args.dir), strict=args.fail_on_regression)
    lines = history.timelines(runs, calibration.Calibration.load(args.calibration))
    threshold = threshold_of(args.threshold)
    text, found = history.render(lines, threshold)
    print(text)
    if args.png:
        from devicebench import plots

        plots.history_chart(lines, Path(args.png), threshold)
        print(f"chart written to {args.png}")
    for line in found:
        print(line)
    regressed = any(line.startswith("regression") for line in found)
    if args.fail_on_regression and not regressed and any(line.startswith("inconclusive") for line in found):
        raise GateCannotJudge(f"--fail-on-regression: a step above is inconclusive: its data could not have seen a "
                              f"{threshold.describe()} change, so the gate cannot pass it (devicebench calibrate, or "
                              f"several processes a version, would let it judge)")
    return 1 if regressed and args.fail_on_regression else 0


def until_target(parts: list[tuple[str | None, float]] | None) -> UntilTarget | None:
    """The ``--until`` options as one target: the size for every row and the sizes asked of single pipelines."""
    return UntilTarget.from_parts(parts, "--until")


def threshold_of(parts: list[tuple[str | None, float]] | None) -> Threshold:
    """The ``--threshold`` options as one: 5% for every row unless given, PIPELINE=SIZE for single pipelines."""
    return Threshold.from_parts(parts, "--threshold") or Threshold(DEFAULT_THRESHOLD)
