"""``devicebench run``: measure the selected rows in fresh worker processes, per environment, and merge them.

One process is one sample (significance.py says why), so a verdict needs several. Given one environment (the
current Python) it runs N workers one after another; given two or more (``--env A=/venv-a/bin/python --env
B=/venv-b/bin/python``; the same Python twice is an A/A check) it runs worker pairs: one live worker per
environment, their rounds alternated (interleave.py), pair after pair, until the plan says stop (until.py).

Each worker gets a task (worker.Task: the rows, their options, its turn pipe and core) and writes one file into the
run's staging folder (staging.py); when all are in, one run file per environment is written whole (runfile.py).
An interrupted run keeps its finished workers' files and the same command resumes after them.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from devicebench import affinity, compile_cache, interleave, machine_lock, results, runfile, staging, until, \
    worker
from devicebench.calibration import PAIRS, Calibration
from devicebench.errors import DevicebenchError, UsageError
from devicebench.options import RowOptions
from devicebench.rows import RowSpec
from devicebench.until import UntilTarget, clock

DEFAULT_PROCESSES = 5
# Each row's timed rounds per worker of a pair, at least the scale's: a fast row's pair estimate is the median of
# its rounds' ratios, so more rounds make it closer (docs/comparing.md).
DEFAULT_ROUND_SECONDS = 6.0


@dataclass(frozen=True)
class Environment:
    label: str
    python: str


def parse_environment(text: str) -> Environment:
    """``LABEL=PATH`` (or just ``PATH``, labelled by its virtual environment's folder name)."""
    label, _, python = text.rpartition("=")
    path = Path(python).expanduser()
    if not path.is_file() or not os.access(path, os.X_OK):
        raise UsageError(f"--env {text!r}: {python} is not an executable Python; give LABEL=PATH/TO/bin/python")
    label = label or path.parent.parent.name or "env"
    if not label.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise UsageError(f"--env {text!r}: the label may hold letters, digits, '.', '-' and '_' only")
    return Environment(label, str(path))


@dataclass(frozen=True)
class Plan:
    """What every worker of a run measures, and how its workers come by compiled code."""

    rows: tuple[RowSpec, ...]
    options: RowOptions
    keep_compiled: bool = True  # on the cpu alone; off for a calibration of plain runs, which each compile

    @property
    def cpu_only(self) -> bool:
        """No accelerator row: nothing to pin, and compiled code can be kept (compile_cache.py)."""
        return all(row.device == "cpu" for row in self.rows)

    def compile_cache(self) -> str:
        """What the user asked for; else kept for worker pairs on the cpu alone, and compiled anew everywhere else
        (as a plain run does)."""
        if self.options.compile_cache is not None:
            return self.options.compile_cache
        return "kept" if self.cpu_only and self.keep_compiled else "fresh"

    def describe(self) -> dict:
        return {"rows": [vars(row) for row in self.rows], "options": self.options.to_dict(),
                "compile_cache": self.compile_cache()}


def run(environments: list[Environment], processes: int | None, plan: Plan, output_dir: Path, name: str,
        echo: Callable[[str], None] = print, sweep_positions: dict[str, int] | None = None,
        until_target: float | UntilTarget | None = None, budget_seconds: float | None = None,
        round_seconds: float | None = None, calibration: Calibration | None = None,
        pin_rounds: bool = True) -> list[Path]:
    """Measure ``plan`` in every environment and write one run file per environment; their paths.

    One environment: ``processes`` workers, one after another. Two or more: worker pairs; ``processes`` pairs, or
    with ``until_target`` pairs until every row's smallest detectable change is at or under it (``budget_seconds``
    bounds the time; a row that got there is left out of later pairs). ``round_seconds``: a worker times each
    row's rounds for about this long (interleave.Scheduler). ``calibration``: this machine's measured noise.
    ``pin_rounds``: the workers of a pair run their accelerator rows' rounds on one core, another each pair
    (affinity.py). ``sweep_positions`` (devicebench sweep) records each environment's place in the sweep.
    """
    if isinstance(until_target, float):
        until_target = UntilTarget(until_target)
    if processes is not None and processes < 1:
        raise UsageError(f"--processes {processes}: give 1 or more")
    if not plan.rows:
        raise UsageError("no row selected: check --device, --pipeline, --workload and -k")
    labels = [env.label for env in environments]
    if len(set(labels)) != len(labels):
        raise UsageError(f"--env labels must differ (got {', '.join(labels)}); e.g. --env A=... --env B=...")
    if until_target is not None and len(environments) < 2:
        raise UsageError("--until needs two environments to compare, e.g. --env A=PYTHON --env B=PYTHON (the same "
                         "Python twice is an A/A check)")
    if until_target is not None and budget_seconds is None and processes is None:
        raise UsageError("--until needs a bound: --budget (e.g. --budget 15m) or --processes as the most pairs; a "
                         "row that cannot get there would otherwise add pairs forever")
    output_dir = Path(output_dir).resolve()
    machine_lock.hold(f"devicebench run --name {name}")
    if len(environments) == 1:  # separate processes, as plain runs are: each compiles its own code
        plan = replace(plan, keep_compiled=False)
    folder = staging.claim(output_dir / f".{name}.processes",
                           {**plan.describe(), "environments": [vars(env) for env in environments]})
    finished = False
    try:
        started = time.monotonic()
        if len(environments) == 1:
            count = _run_sequential(environments[0], processes or DEFAULT_PROCESSES, plan, folder, echo,
                                    budget_seconds)
        else:
            count = Pairs(environments, plan, folder, echo, until_target, calibration,
                          DEFAULT_ROUND_SECONDS if round_seconds is None else round_seconds,
                          pin_rounds and not plan.cpu_only).run(processes, budget_seconds)
        interleave_id = folder.plan().get("interleave_id") if len(environments) > 1 else None
        written = []
        for env in environments:
            if folder.no_rows(env.label).exists():
                stale = output_dir / f"{name}-{env.label}.json"
                if stale.exists():  # an earlier run's file would be read as this run's
                    stale.unlink()
                    echo(f"removed {stale}: an earlier run's, and this run measured no row in {env.label}")
                continue
            merged = merged_run(folder, env, count, interleave_id)
            if sweep_positions is not None:
                merged["devicebench"]["sweep_position"] = sweep_positions[env.label]
            written.append(runfile.write_json_atomically(output_dir / f"{name}-{env.label}.json", merged))
        finished = True
    finally:
        folder.release(remove=finished)
    # Where a run asked sizes of its rows, the gate that judges them at those sizes.
    gate = f". Gate them: devicebench compare {' '.join(map(str, written))} {until_target.option('--threshold')} " \
           f"--fail-on-regression" if isinstance(until_target, UntilTarget) and len(written) > 1 else ""
    echo(f"{count} process(es) per environment in {clock(time.monotonic() - started)}; runs written: "
         f"{', '.join(map(str, written)) or 'none'}{gate}")
    return written


def merged_run(folder: staging.Staging, env: Environment, count: int, interleave_id: str | None) -> dict:
    files = [(index, json.loads(folder.worker_file(env.label, index).read_text())) for index in range(1, count + 1)
             if folder.worker_file(env.label, index).exists()]
    return staging.merge(files, env.label, env.python, interleave_id)


def _task(plan: Plan, folder: staging.Staging, env: Environment, index: int, rows: tuple[RowSpec, ...],
          **settings) -> worker.Task:
    mode = plan.compile_cache()
    return worker.Task(rows=[vars(row) for row in rows], options=plan.options.to_dict(),
                       output=str(folder.worker_file(env.label, index).with_suffix(".part")), compile_cache=mode,
                       compile_cache_dir=str(folder.compile_folder(env.label)) if mode == "kept" else None,
                       **settings)


def _run_sequential(env: Environment, processes: int, plan: Plan, folder: staging.Staging,
                    echo: Callable[[str], None], budget_seconds: float | None = None) -> int:
    """``processes`` fresh workers of one environment in turn (fewer if ``budget_seconds`` ends); how many ran."""
    started, ran = time.monotonic(), 0
    for index in range(1, processes + 1):
        where = f"[{index}/{processes}] {env.label} process {index}/{processes}"
        if folder.no_rows(env.label).exists():
            break
        if folder.worker_file(env.label, index).exists():
            echo(f"{where}: already measured, kept")
            continue
        spent = time.monotonic() - started
        if budget_seconds is not None and ran and spent + spent / ran > budget_seconds:
            echo(f"budget {clock(budget_seconds)} spent ({clock(spent)} measured; the next process would take about "
                 f"{clock(spent / ran)}): stopping after {index - 1} processes")
            return index - 1
        ran += 1
        echo(f"{where}: running ({clock(spent)} so far)")
        task = _task(plan, folder, env, index, plan.rows, count_steps=index == 1, parity_check=index == 1)
        code = _run_worker(env, task, folder.task_file(env.label, index), folder.log(env.label, index))
        if _accept(folder, env, index, code, f"process {index}", echo):
            echo("    " + _summary(json.loads(folder.worker_file(env.label, index).read_text())))
    return processes


def _run_worker(env: Environment, task: worker.Task, task_file: Path, log: Path) -> int:
    """One worker alone, to its end; its exit code. A file left by an earlier attempt is removed first, so that
    what is read afterwards is this worker's."""
    Path(task.output).unlink(missing_ok=True)
    task.write(task_file)
    try:
        with open(log, "w") as output:
            return subprocess.run(worker.command(env.python, task_file), stdout=output, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, pass_fds=machine_lock.inherited_fds()).returncode
    except OSError as error:
        raise runfile.FileError(f"could not write {log}: {error.strerror}; free space or choose another "
                                f"--output-dir, then run again") from None


def _accept(folder: staging.Staging, env: Environment, index: int, code: int | None, what: str,
            echo: Callable[[str], None]) -> bool:
    """Keep a worker's file if it measured its rows; mark an environment whose every row skipped itself; raise,
    with the worker's own reason, if it failed. True when a file was kept."""
    part = folder.worker_file(env.label, index).with_suffix(".part")
    data = json.loads(part.read_text()) if part.exists() else None
    measured_before = any(folder.worker_file(env.label, earlier).exists() for earlier in range(1, index))
    if code == 0 and data is not None and not any(row["status"] == "measured" for row in data["rows"]) \
            and not measured_before:
        reasons = "\n".join(f"    {row['name']}: {row.get('reason')}" for row in data["rows"]) or "    (no rows)"
        runfile.write_atomically(folder.no_rows(env.label), reasons)
        part.unlink()
        echo(f"    no row ran in {env.label}, so it gets no more workers and no run:\n{reasons}")
        return False
    if code != 0 or data is None:
        part.unlink(missing_ok=True)
        failed = [row for row in (data or {}).get("rows", []) if row["status"] == "failed"]
        cause = f"{failed[0]['name']}: {failed[0]['reason']}" if failed else _log_tail(folder.log(env.label, index))
        raise DevicebenchError(f"{env.label}: its worker ({what}) exited with {code}: {cause}\n(log: "
                               f"{folder.log(env.label, index)}); the workers finished so far are kept and the same "
                               f"command resumes after them")
    part.replace(folder.worker_file(env.label, index))
    return True


def _log_tail(log: Path, lines: int = 15) -> str:
    text = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
    return "its output ended:\n" + "\n".join(text[-lines:])


def _compile_first(environments: list[Environment], plan: Plan, folder: staging.Staging,
                   echo: Callable[[str], None]) -> float:
    """Where an environment's workers keep compiled code (Plan.compile_cache), compile it first in an untimed
    worker of its own, so every timed worker, the first included, loads it; the seconds it took. Compiling in a
    timed worker added spread beyond what the code itself varies by (docs/comparing.md). A folder marked compiled
    is not compiled again, so a resumed run goes straight to its workers."""
    compiled = tuple(row for row in plan.rows if row.pipeline == "tuned")
    if plan.compile_cache() != "kept" or not compiled or "compile" in plan.options.tuned_off:
        return 0.0
    started = time.monotonic()
    for env in environments:
        mark = folder.compile_folder(env.label) / compile_cache.COMPILED_MARK
        if mark.exists():
            continue
        echo(f"{env.label}: compiling its code in a worker of its own first (not timed; every worker of {env.label} "
             f"loads it)")
        task = _task(plan, folder, env, 0, compiled, compile_only=True, count_steps=False, parity_check=False)
        code = _run_worker(env, task, folder.task_file(env.label, 0), folder.log(env.label, 0))
        if code != 0:
            raise DevicebenchError(f"{env.label}: compiling its code first failed (exit {code}); the same command "
                                   f"tries again. {_log_tail(folder.log(env.label, 0))}")
        Path(task.output).unlink(missing_ok=True)
        runfile.write_atomically(mark, time.strftime("%Y-%m-%dT%H:%M:%S"))
    return time.monotonic() - started


@dataclass
class Pairs:
    """Worker pairs (one live worker per environment, rounds alternated) until the plan says stop."""

    environments: list[Environment]
    plan: Plan
    folder: staging.Staging
    echo: Callable[[str], None]
    target: UntilTarget | None
    calibration: Calibration | None
    round_seconds: float
    pin: bool

    def run(self, processes: int | None, budget_seconds: float | None) -> int:
        """Pairs until every row's smallest detectable change, each environment against the first, is at or under
        its size (until.RowProgress.reached), ``processes`` pairs when given as a cap, or the budget, whichever
        comes first; how many pairs. A row that got there is left out of later pairs."""
        limit = processes if self.target is not None or processes is not None else DEFAULT_PROCESSES
        index, spent, done = 1, 0.0, 0
        while True:
            # An environment in which every row skipped itself takes no further part (its reasons were shown).
            environments = [env for env in self.environments if not self.folder.no_rows(env.label).exists()]
            if len(environments) < (2 if self.target is not None else 1):
                self.echo("no environment has rows to measure" if not environments else
                          "fewer than two environments have rows to compare: no more pairs")
                break
            if all(self.folder.worker_file(env.label, index).exists() for env in environments):
                self.echo(f"pair {index}: already measured, kept")
                spent += self.folder.pair_seconds(index)
                index += 1
                continue
            done = index - 1
            progress = self.progress(environments, done)
            if done and progress:
                self.echo(until.progress_lines(progress, done, self.target))
            reached = [row for row in progress.values() if self.target is not None and row.reached(self.target)]
            if self.target is not None and progress and len(reached) == len(progress):
                self.echo(f"every row can see a change of its size ({self.target.describe()}) after {done} pairs: "
                          f"stopping")
                break
            if limit is not None and done >= limit:
                break
            left = [row.test for row in progress.values() if row not in reached] if progress else None
            next_pair = self.next_pair_seconds(done, left) if budget_seconds is not None and done else 0.0
            if budget_seconds is not None and done and spent + next_pair > budget_seconds:
                advice = until.budget_advice(self.calibrated(environments, done, progress), done, spent,
                                             next_pair) if self.target is not None else ""
                self.echo(f"budget {clock(budget_seconds)} spent ({clock(spent)} measured; the next pair would take "
                          f"about {clock(next_pair)}): stopping after {done} pairs{advice}")
                break
            # Rows some environment skips can never be judged: they leave the later pairs too.
            unjudged = self.unjudgeable(environments, done)
            if unjudged and index == 2:
                self.echo(f"    not judged, and left out of later pairs: {', '.join(sorted(unjudged))} (measured in "
                          f"some environments only; the workers' logs say why the others skipped them)")
            skip = {row.test for row in reached}
            if skip:
                self.echo(f"    pair {index} leaves out {len(skip)} row(s) that reached their size: "
                          f"{', '.join(sorted(test.removeprefix('test_') for test in skip))}")
            spent += _compile_first(environments, self.plan, self.folder, self.echo)
            rows = tuple(row for row in self.plan.rows if row.name not in skip | unjudged)
            spent += self.run_pair(environments, index, rows, spent)
            index += 1
            done = index - 1
        if self.target is not None:
            self.echo(until.report(self.progress(environments, done), self.target, done, spent))
        return done

    def progress(self, environments: list[Environment], pairs: int) -> dict[str, until.RowProgress]:
        """Each row's standing after ``pairs`` pairs, of the rows every environment measured."""
        if pairs < 2 or len(environments) < 2:
            return {}
        runs = [results.run_of(merged_run(self.folder, env, pairs, "in progress"), self.folder.folder)
                for env in environments]
        skipped = self.unjudgeable(environments, pairs)
        family = sum(1 for row in runs[0].rows if row.test not in skipped)  # the rows the gate will judge
        return {test: row for test, row in until.progress_by_row(runs, self.calibration, family).items()
                if test not in skipped}

    def calibrated(self, environments: list[Environment], pairs: int, progress: dict) -> bool:
        """Whether the rows pool this machine's pair calibration: as judged (``progress``), else if it has them."""
        if progress:
            return any(row.calibrated for row in progress.values())
        run = results.run_of(merged_run(self.folder, environments[0], pairs, "in progress"), self.folder.folder)
        return bool(self.calibration and run.rows
                    and all(self.calibration.noise_for(run, row, PAIRS) for row in run.rows))

    def unjudgeable(self, environments: list[Environment], pairs: int) -> set[str]:
        """Rows of the first pair that some environment's worker did not measure (it skipped them)."""
        if pairs < 1 or len(environments) < 2:
            return set()
        measured = [{row["name"] for row in json.loads(self.folder.worker_file(env.label, 1).read_text())["rows"]
                     if row["status"] == "measured"} if self.folder.worker_file(env.label, 1).exists() else set()
                    for env in environments]
        return set.union(*measured) - set.intersection(*measured)

    def run_pair(self, environments: list[Environment], index: int, rows: tuple[RowSpec, ...],
                 spent: float) -> float:
        """One worker per environment, taking turns round by round; their files are kept only if all succeed.

        Which environment's worker starts first and leads the turns rotates from pair to pair (A B, then B A), so
        that whatever goes with a place in that order is spread over the environments alike (counterbalancing,
        which costs nothing)."""
        shift = (index - 1) % len(environments)
        environments = environments[shift:] + environments[:shift]
        core = affinity.core_for_pair(index, affinity.allowed_cores()) if self.pin else None
        on_core = f", accelerator rounds on core {core}" if core is not None else ""
        self.echo(f"pair {index}: {' + '.join(env.label for env in environments)} workers, rounds alternated"
                  f"{on_core} ({clock(spent)} measured so far)")

        for env in environments:  # a file left by an earlier attempt at this pair is not this one's
            self.folder.worker_file(env.label, index).with_suffix(".part").unlink(missing_ok=True)

        # From the second pair on, rows whose first builds chose nothing by timing are built side by side.
        together = self.folder.built_alike([env.label for env in environments]) if index > 1 else []

        def command_for(env: Environment) -> interleave.WorkerCommand:
            def command(read_fd: int, write_fd: int) -> list[str]:
                # Counts and the parity check are the same in every worker of one code: the first pair's serve all.
                task = _task(self.plan, self.folder, env, index, rows, turn_pipe=[read_fd, write_fd],
                             round_core=core, count_steps=index == 1, parity_check=index == 1,
                             build_together=together)
                return worker.command(env.python, task.write(self.folder.task_file(env.label, index)))
            return command

        started = time.monotonic()
        try:
            codes, schedule = interleave.run_workers(
                {env.label: command_for(env) for env in environments},
                {env.label: self.folder.log(env.label, index) for env in environments}, self.round_seconds,
                until.rounds_wanted(self.calibration, self.target, family=len(rows)))
        except BaseException:
            for env in environments:
                self.folder.worker_file(env.label, index).with_suffix(".part").unlink(missing_ok=True)
            raise
        seconds = time.monotonic() - started
        # The worker that failed first is named: the others were stopped (killed) because of it.
        ordered = sorted(environments, key=lambda env: codes[env.label] is None or codes[env.label] < 0)
        try:
            kept = [env for env in ordered
                    if _accept(self.folder, env, index, codes[env.label], f"pair {index}", self.echo)]
        except DevicebenchError:
            for env in environments:
                self.folder.worker_file(env.label, index).unlink(missing_ok=True)
                self.folder.worker_file(env.label, index).with_suffix(".part").unlink(missing_ok=True)
            raise
        runfile.write_json_atomically(self.folder.pair_meta(index), {
            "seconds": seconds, "turns": [[sequence, label, point.test, point.step, point.granted_at, point.together]
                                          for sequence, label, point in schedule]})
        worker_files = [json.loads(self.folder.worker_file(env.label, index).read_text()) for env in kept]
        for env, data in zip(kept, worker_files):
            self.echo(f"    {env.label}: " + _summary(data))
        self.echo("    " + interleave.where_the_time_went(schedule, seconds, worker_files))
        return seconds

    def next_pair_seconds(self, done: int, rows_left: list[str] | None) -> float:
        """What the next pair should take: its start-up plus, for each row it will run, that row's time (building
        and rounds) in the latest pair that ran it; the mean pair where turns were not recorded or every row runs.
        By row, because once the slow rows reached their size the next pair runs only the rest; the latest, because
        the first pair also checks parity, counts steps and builds every row in turn."""
        metas = [json.loads(self.folder.pair_meta(index).read_text()) for index in range(1, done + 1)
                 if self.folder.pair_meta(index).exists()]
        mean_pair = sum(meta["seconds"] for meta in metas) / len(metas) if metas else 0.0
        timed = [meta for meta in metas if meta.get("turns")]
        if rows_left is None or not timed:
            return mean_pair
        start_up, latest = 0.0, {}  # each row's seconds in the latest pair that ran it
        for meta in timed:
            turns = [turn for turn in meta["turns"] if turn[4] is not None]  # [sequence, label, test, step, at, ...]
            if not turns:
                return mean_pair
            ends = [turn[4] for turn in turns[1:]] + [meta["seconds"]]
            start_up = turns[0][4]
            by_row: dict[str, float] = {}
            for turn, end in zip(turns, ends):
                by_row[turn[2]] = by_row.get(turn[2], 0.0) + end - turn[4]
            latest.update(by_row)
        if any(test not in latest for test in rows_left):
            return mean_pair
        return start_up + sum(latest[test] for test in rows_left)


def _summary(worker_file: dict) -> str:
    measured = [row for row in worker_file["rows"] if row["status"] == "measured"]
    if not measured:
        return "no rows (all skipped?)"
    parts = [f"{row['name'].removeprefix('test_')} {row['extra']['samples_per_s']:,.0f}/s "
             f"({len(row['extra']['processes'][0]['train_seconds'])} rounds)" for row in measured]
    synthetic = any(row["extra"].get("data_source") == "synthetic" for row in measured)
    return "; ".join(parts) + (" [synthetic data]" if synthetic else "")
