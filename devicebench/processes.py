"""``devicebench run``: time the suite in several fresh processes, alternating environments, and merge them.

One process is one sample (significance.py says why), so a verdict needs several. Given one environment (the
current Python) it runs ``pytest benchmarks`` N times; given two or more (``--env A=/venv-a/bin/python
--env B=/venv-b/bin/python``; the same Python twice is an A/A check) it alternates them, A B A B ..., as asv's
``--interleave-rounds`` does, so that a machine drifting over the minutes (another tenant, thermals) lands on both
sides alike instead of looking like a difference between them.

Each process writes its own pytest-benchmark JSON into a staging folder; when all are done, one run per
environment is written (atomically) with every process's rounds kept, labelled. An interrupted ``run`` leaves the
finished processes in the staging folder and the same command picks up from there; nothing half-written is left
where ``compare`` would read it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from devicebench import affinity, interleave, results, stability
from devicebench.calibration import Calibration, Noise
from devicebench.errors import DevicebenchError, UsageError

REPO = Path(__file__).resolve().parents[1]  # the checkout: benchmarks/, conftest.py and fixtures/ live here
# machine_info fields that must agree between the processes merged into one run (pyperf refuses the same).
SAME_IN_EVERY_PROCESS = ("node", "cpu_name", "torch_version", "cuda_version", "devicebench_schema", "accelerators")
PER_PROCESS_FIELDS = ("round_seconds", "train_seconds", "val_seconds", "samples_per_s", "compile_s",
                      "loader_wait_fraction", "unstable_reason", "round_sequence")


@dataclass(frozen=True)
class UntilTarget:
    """``--until``: the smallest detectable change asked of every row, or of one pipeline's rows (``seed=10%``).

    Why per pipeline. The ``seed`` rows run the posts' CPU data loaders, whose rounds swing with the host (H200 host,
    A/A: a B round against the A round beside it, 15-18% standard deviation for mnist_mlp seed, 0.7-1.3% for
    resnet18_cifar resident and tuned); one size for all would spend the whole budget on the seed rows, or ask too
    little of the others."""

    default: float
    by_pipeline: tuple[tuple[str, float], ...] = ()

    def for_pipeline(self, pipeline: str | None) -> float:
        return dict(self.by_pipeline).get(pipeline, self.default)

    def describe(self) -> str:
        extra = ", ".join(f"{pipeline} {size:.1%}" for pipeline, size in self.by_pipeline)
        return f"{self.default:.1%}" + (f" ({extra})" if extra else "")


@dataclass(frozen=True)
class Forecast:
    """What a row's calibration (where it records round noise) expects of its pairs at the rounds it timed."""

    pair_variance: float  # of a pair's estimate (log B/A) at ``rounds``
    df: int  # the calibration's degrees of freedom
    rounds: int
    per_process_variance: float  # the part no number of rounds removes


@dataclass(frozen=True)
class RowProgress:
    """Where one row stands in an ``--until`` run: what its pairs so far could detect."""

    test: str
    nodeid: str | None  # pytest's id of the row, to leave it out of later pairs once it has reached its size
    pipeline: str | None
    pairs: int
    detectable: float | None  # the worst over each environment against the first; None: cannot be judged
    calibrated: bool  # every verdict behind it pooled this machine's calibration (significance.py)
    forecast: Forecast | None = None  # the worst over the environments compared

    def pairs_needed(self, until: UntilTarget, most: int = 50) -> int | None:
        """The pairs at which the calibration expects this row to reach its size (None: more than ``most``, or no
        forecast): what to tell a user whose budget ended first."""
        if self.forecast is None:
            return None
        from devicebench import significance

        limit, forecast = math.log1p(until.for_pipeline(self.pipeline)), self.forecast
        return next((n for n in range(2, most + 1) if significance.detection_factor(n - 1 + forecast.df)
                     * math.sqrt(forecast.pair_variance / n) <= limit), None)

    def forecast_text(self, until: UntilTarget) -> str:
        if self.forecast is None:
            return ""
        needed = self.pairs_needed(until)
        expected = f"about {needed} pairs" if needed else "more than 50 pairs"
        return (f"; the calibration expects {expected} at {self.forecast.rounds} rounds a worker: "
                f"{math.expm1(math.sqrt(self.forecast.per_process_variance)):.1%} of a pair's spread is per "
                f"process, which more rounds do not remove")

    def reached(self, until: UntilTarget) -> bool:
        # Judged from MIN_PAIRS_FOR_UNTIL pairs, or from two where the calibration supplies the degrees of freedom.
        enough = self.pairs >= (MIN_PAIRS_CALIBRATED if self.calibrated else MIN_PAIRS_FOR_UNTIL)
        return enough and self.detectable is not None and self.detectable <= until.for_pipeline(self.pipeline)


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


def run_interleaved(environments: list[Environment], processes: int | None, pytest_args: list[str],
                    output_dir: Path, name: str, echo: Callable[[str], None] = print,
                    sweep_positions: dict[str, int] | None = None, until: float | UntilTarget | None = None,
                    budget_seconds: float | None = None, round_seconds: float | None = None,
                    calibration: Calibration | None = None, pin_rounds: bool = True) -> list[Path]:
    """Measure the suite in every environment and write one merged run per environment.

    One environment: ``processes`` fresh pytest processes, one after another. Two or more: worker pairs (one live
    worker per environment, their rounds alternated, interleave.py); ``processes`` pairs, or with ``until`` pairs
    added until every row's smallest detectable change is at or under it (``budget_seconds`` bounds the time; a
    row that got there is left out of later pairs, so they run only the rows still short of it);
    ``round_seconds``: a worker times each row's rounds for about this long (interleave.Scheduler._size;
    default DEFAULT_ROUND_SECONDS); on cuda each worker compiles anew, on the cpu alone an environment keeps its
    compiled code (_compile_cache_args).
    ``calibration``: this machine's measured noise, which the detectable changes of ``until`` use.
    ``pin_rounds``: the workers of a pair run their accelerator rows' rounds on one core, another each pair
    (affinity.py says why).
    ``sweep_positions`` (from ``devicebench sweep``) records each environment's place in the sweep, so that
    ``history`` can order environments that share a torch version.
    """
    if isinstance(until, float):
        until = UntilTarget(until)
    if processes is not None and processes < 1:
        raise UsageError(f"--processes {processes}: give 1 or more")
    labels = [env.label for env in environments]
    if len(set(labels)) != len(labels):
        raise UsageError(f"--env labels must differ (got {', '.join(labels)}); e.g. --env A=... --env B=...")
    if until is not None and len(environments) < 2:
        raise UsageError("--until needs two environments to compare, e.g. --env A=PYTHON --env B=PYTHON (the same "
                         "Python twice is an A/A check)")
    if until is not None and budget_seconds is None and processes is None:
        raise UsageError("--until needs a bound: --budget (e.g. --budget 15m) or --processes as the most pairs; a "
                         "row that cannot get there would otherwise add pairs forever")
    output_dir = Path(output_dir).resolve()  # workers run in the checkout (REPO), not where this was started
    staging = output_dir / f".{name}.processes"
    _claim_staging(staging, {"pytest_args": pytest_args, "environments": [vars(env) for env in environments]})
    started = time.monotonic()
    if len(environments) == 1:
        count = _run_sequential(environments[0], processes or DEFAULT_PROCESSES, pytest_args, staging, echo)
    else:
        count = _run_pairs(environments, processes, pytest_args, staging, echo, until, budget_seconds,
                           DEFAULT_ROUND_SECONDS if round_seconds is None else round_seconds, calibration,
                           pin_rounds)
    plan = json.loads((staging / "plan.json").read_text())
    written = []
    for env in environments:
        if (staging / f"{env.label}.no-rows").exists():
            continue
        merged = _merged(staging, env, count, plan.get("interleave_id") if len(environments) > 1 else None)
        if sweep_positions is not None:
            merged["devicebench_run"]["sweep_position"] = sweep_positions[env.label]
        written.append(results.write_json_atomically(Path(output_dir) / f"{name}-{env.label}.json", merged))
    shutil.rmtree(staging)
    echo(f"{count} process(es) per environment in {_elapsed(started)}; runs written: "
         f"{', '.join(map(str, written))}")
    return written


DEFAULT_PROCESSES = 5
# Each row's timed rounds per worker of a pair, at least the scale's. H200 host: mnist_mlp resident's 0.16 s rounds
# vary 12% one to the next, so 10 rounds leave a pair estimate ~5% off; 40 (6 s) about 2.5%.
DEFAULT_ROUND_SECONDS = 6.0
# --until judges the detectable change only from this many pairs on: with two, a t-test on pair means has one
# degree of freedom and its detectable change is ten times the pairs' spread, so stopping there is by chance.
MIN_PAIRS_FOR_UNTIL = 3
# ... or from two, when the row's verdict pooled this machine's calibration: its degrees of freedom are then the
# calibration's plus one, and the F-test that guards the pooling has a pair spread to check.
MIN_PAIRS_CALIBRATED = 2


def _staged(staging: Path, label: str, index: int) -> Path:
    return staging / f"{label}-{index:03d}.json"


def _merged(staging: Path, env: Environment, count: int, interleave_id: str | None) -> dict:
    runs = [json.loads(_staged(staging, env.label, index).read_text()) for index in range(1, count + 1)]
    return merge_processes(runs, env, interleave_id)


def _run_sequential(env: Environment, processes: int, pytest_args: list[str], staging: Path,
                    echo: Callable[[str], None]) -> int:
    """``processes`` fresh pytest processes of one environment, one after another; how many were measured."""
    started = time.monotonic()
    no_rows = staging / f"{env.label}.no-rows"
    for index in range(1, processes + 1):
        target = _staged(staging, env.label, index)
        where = f"[{index}/{processes}] {env.label} process {index}/{processes}"
        if no_rows.exists():
            break
        if target.exists():
            echo(f"{where}: already measured, kept")
            continue
        echo(f"{where}: running ({_elapsed(started)} so far)")
        skipped = _run_one(env, pytest_args, target)
        if skipped is not None:  # every row skipped itself (e.g. no torchvision for this torch): say why
            no_rows.write_text(skipped)
            echo(f"    no row ran in {env.label}, so it gets no more processes and no run:\n{skipped}")
        else:
            echo("    " + _summary(json.loads(target.read_text())))
    return processes


def _run_pairs(environments: list[Environment], processes: int | None, pytest_args: list[str], staging: Path,
               echo: Callable[[str], None], until: UntilTarget | None, budget_seconds: float | None,
               round_seconds: float, calibration: Calibration | None = None, pin_rounds: bool = True) -> int:
    """Worker pairs (one live worker per environment, rounds alternated) until the plan says stop; how many.

    Without ``until``: ``processes`` pairs (default 5). With it: pairs until every row's smallest detectable
    change, each environment against the first, is at or under its size (RowProgress.reached), ``processes``
    pairs when given as a cap, or the budget, whichever comes first. A row that got there is deselected from later
    pairs, whose workers then spend their time on the rows still short of it. Stopping a row on its detectable
    change, which depends only on the spread and not on the difference seen, leaves the test's 5% level as it
    is; stopping on the p-value would not.
    """
    limit = processes if until is not None or processes is not None else DEFAULT_PROCESSES
    pin = pin_rounds and not _cpu_only(pytest_args)  # a cpu-only run has no accelerator row to pin
    index, spent = 1, 0.0
    while True:
        # An environment in which every row skipped itself takes no further part (its reasons were shown).
        environments = [env for env in environments if not (staging / f"{env.label}.no-rows").exists()]
        labels = [env.label for env in environments]
        if len(environments) < (2 if until is not None else 1):
            echo("no environment has rows to measure" if not environments else
                 "fewer than two environments have rows to compare: no more pairs")
            done = index - 1
            break
        if all(_staged(staging, label, index).exists() for label in labels):
            echo(f"pair {index}: already measured, kept")
            spent += _pair_seconds(staging, index)
            index += 1
            continue
        done = index - 1
        progress = _progress_by_row(staging, environments, done, calibration) if done >= 2 else {}
        if done and progress:
            echo(_progress_lines(progress, done, until))
        reached = [row for row in progress.values() if until is not None and row.reached(until)]
        if until is not None and progress and len(reached) == len(progress):
            echo(f"every row can see a change of its size ({until.describe()}) after {done} pairs: stopping")
            break
        if limit is not None and done >= limit:
            break
        rows_left = [row.test for row in progress.values() if row not in reached] if progress else None
        next_pair = _next_pair_seconds(staging, done, rows_left) if budget_seconds is not None and done else 0.0
        if budget_seconds is not None and done and spent + next_pair > budget_seconds:
            echo(f"budget {_clock(budget_seconds)} spent ({_clock(spent)} measured; the next pair would take about "
                 f"{_clock(next_pair)}): stopping after {done} pairs")
            if until is not None and done < MIN_PAIRS_FOR_UNTIL and not any(row.calibrated for row in
                                                                            progress.values()):
                # Say what would let --until judge, rather than leave the user with "0 of 0 rows". (Rows the
                # calibration lets it judge from two pairs get their own figures and forecasts below.)
                needed = math.ceil(MIN_PAIRS_FOR_UNTIL * spent / done / 60)
                echo(f"    --until judges from {MIN_PAIRS_FOR_UNTIL} pairs on, and at {_clock(spent / done)} a pair "
                     f"this budget holds {done}: give --budget {needed}m or more, or fewer rows (-k); the same "
                     f"command resumes after the pairs measured")
            break
        # Rows that reached their size are left out of this pair: both workers get the same selection, so they
        # still meet at the same tests (interleave.Scheduler.wait).
        leave_out = [arg for row in reached if row.nodeid for arg in ("--deselect", row.nodeid)]
        if leave_out:
            echo(f"    pair {index} leaves out {len(reached)} row(s) that reached their size: "
                 f"{', '.join(row.test.removeprefix('test_') for row in reached)}")
        spent += _compile_before_the_pairs(environments, pytest_args, staging, echo)
        pair_seconds = _run_pair(environments, index, [*pytest_args, *leave_out], staging, echo, spent,
                                 round_seconds, _rounds_wanted(calibration, until),
                                 affinity.core_for_pair(index, affinity.allowed_cores()) if pin else None)
        spent += pair_seconds
        index += 1
    if until is not None:
        echo(_until_report(_progress_by_row(staging, environments, done, calibration), until, done, spent))
    return done


def _run_pair(environments: list[Environment], index: int, pytest_args: list[str], staging: Path,
              echo: Callable[[str], None], spent: float, round_seconds: float,
              rounds_wanted: Callable[[dict, int], int | None] | None = None, round_core: int | None = None
              ) -> float:
    """One worker per environment, taking turns round by round; their files are kept only if all succeed.
    ``round_core``: the core every worker of the pair pins its accelerator rows' rounds to (affinity.py).

    Which environment's worker starts first and leads the turns rotates from pair to pair (A B, then B A; with
    three, A B C, B C A, C A B), so that whatever goes with a place in that order is spread over the
    environments alike instead of landing on one for the whole run. Why: on the H200 host the pairs of one A/A
    run shared a sign more than their rounds' noise allows (mnist_mlp resident, five runs of 2-4 pairs: run means
    +3.4% with all four pairs above zero, -4.5% with all three below, where the rounds allow 1.0-2.1%;
    chi-square p=5e-5; resnet18_cifar seed: -15.6% over two pairs, p=0.03), and the place was the one thing
    that told the two workers apart. Measured since, it is not shown to be the cause (H200, mnist_mlp, 7 pairs
    alternating: A-first and B-first pairs alike, Welch p=0.69 and 0.96; 2-core VM: an A/A's mnist_mlp resident
    pairs moved with the time in the run, not the place; docs/comparing.md), so the rotation stays as plain
    counterbalancing, which costs nothing."""
    shift = (index - 1) % len(environments)
    environments = environments[shift:] + environments[:shift]
    labels = [env.label for env in environments]
    on_core = f", accelerator rounds on core {round_core}" if round_core is not None else ""
    echo(f"pair {index}: {' + '.join(labels)} workers, rounds alternated{on_core} ({_clock(spent)} measured so far)")
    parts = {env.label: _staged(staging, env.label, index).with_suffix(".part") for env in environments}
    logs = {env.label: _staged(staging, env.label, index).with_suffix(".log") for env in environments}
    once = _first_pair_only(index, pytest_args)
    commands = {env.label: _pytest_command(env, [*_compile_cache_args(pytest_args, staging, env), *once,
                                                 *pytest_args], parts[env.label]) for env in environments}
    started = time.monotonic()
    try:
        codes, schedule = interleave.run_workers(
            commands, REPO, logs, round_seconds, rounds_wanted,
            {affinity.ROUND_CORE_VARIABLE: str(round_core)} if round_core is not None else None)
    except BaseException:
        for part in parts.values():
            part.unlink(missing_ok=True)
        raise
    seconds = time.monotonic() - started
    for label in labels:
        if codes[label] == 0 and not parts[label].exists():  # pytest-benchmark writes no file when no row ran
            skipped = _skip_reasons(logs[label].read_text())
            (staging / f"{label}.no-rows").write_text(skipped)
            echo(f"    no row ran in {label}, so it gets no more workers and no run:\n{skipped}")
            labels = [other for other in labels if other != label]
    # The worker that failed first is named: the others were stopped (killed) because of it.
    for label in sorted(labels, key=lambda label: codes[label] is None or codes[label] < 0):
        if codes[label] != 0 or not parts[label].exists():
            for part in parts.values():
                part.unlink(missing_ok=True)
            raise DevicebenchError(f"{label}: its worker of pair {index} exited with {codes[label]} (log: "
                                   f"{logs[label]}); the pairs finished so far are kept and the same command "
                                   f"resumes after them. {_failure_excerpt(logs[label].read_text())}")
    (staging / f"pair-{index:03d}.json").write_text(json.dumps({
        "seconds": seconds, "turns": [[sequence, label, point.test, point.step, point.granted_at]
                                      for sequence, label, point in schedule]}))
    for label in labels:
        parts[label].replace(_staged(staging, label, index))
        echo(f"    {label}: " + _summary(json.loads(_staged(staging, label, index).read_text())))
    echo("    " + _where_the_time_went(schedule, seconds, [json.loads(_staged(staging, label, index).read_text())
                                                         for label in labels]))
    return seconds


# What the first pair's workers do for every later pair: counts (counts.py) are the same in every process of one
# code, and the parity check (parity.py) asks whether the device trains as the cpu does, which does not change
# between the workers of one environment. A merged row keeps the first pair's answers (merge_processes). (On the
# H200 the building of a later pair's two mnist_mlp rows took 28 s of a 1m05s pair: the check, the data and the
# CUDA context of two workers; the check's share was not measured apart.)
FIRST_PAIR_ONLY = ("--no-step-counts", "--no-parity-check")


def _first_pair_only(index: int, pytest_args: list[str]) -> list[str]:
    return [] if index == 1 else [option for option in FIRST_PAIR_ONLY if option not in pytest_args]


def _where_the_time_went(schedule: list, seconds: float, worker_runs: list[dict]) -> str:
    """One line on a pair's time: what its workers spent before their first turn (starting Python, importing,
    collecting), building rows (step 0: data, model, compilation, the parity check), and in rounds, of which how
    much was timed. Only one worker runs at a time, so the parts add up to the pair's time."""
    granted = [point.granted_at for _, _, point in schedule if point.granted_at is not None]
    if not granted:
        return f"time: {_clock(seconds)}"
    ends = granted[1:] + [seconds]
    durations = [(point.step, end - point.granted_at) for (_, _, point), end in zip(schedule, ends)]
    building = sum(duration for step, duration in durations if step == 0)
    rounds = sum(duration for step, duration in durations if step > 0)
    timed = sum(sum(bench["extra_info"].get("round_seconds", [])) for run in worker_runs
                for bench in run["benchmarks"])
    return (f"time: {_clock(seconds)} = start-up {granted[0]:.0f} s + building rows {building:.0f} s + rounds "
            f"{rounds:.0f} s, of which timed {timed:.0f} s ({timed / seconds:.0%} of the pair; the rest is "
            f"warm-up rounds, evaluation and step counting)")


def _compile_cache_args(pytest_args: list[str], staging: Path, env: Environment) -> list[str]:
    """How a worker comes by its compiled code, unless the user chose (``--compile-cache``).

    On cuda each worker compiles anew (the plugin's default, ``--compile-cache fresh``): what a compile produces
    differs between processes there (inductor and cuDNN pick some kernels by timing), and a worker pair is the unit
    that samples it. On the cpu alone it does not: seven fresh compiles of mnist_mlp tuned (2-core VM) wrote the
    same sources and shared objects whose machine code (.text) was byte for byte the same. So a cpu-only run keeps
    each environment's compiled code for its later workers (``kept``, a folder per environment in the staging
    folder, never shared between environments), which costs the information nothing and saves what compiling
    costs a worker: about a minute for resnet18_cifar tuned on the VM, where a quick pair's building took 119-152 s.
    Compiling in the timed process also added spread there, for a reason not found: the VM's A/As, spread between
    pairs about zero, of fresh compiles mnist_mlp tuned 4.5% (7 pairs) and resnet18_cifar tuned 5.0% (4), of kept
    code 3.3% (38) and 2.2% (18); the seed and resident rows of the same A/As 2.5-4.0%. So the kept code is
    compiled before the first pair, in a process of its own (``_compile_before_the_pairs``)."""
    kept_dir = ["--compile-cache-dir", str((staging / f"compile-cache-{env.label}").resolve())]
    mode, folder = _option(pytest_args, "--compile-cache"), _option(pytest_args, "--compile-cache-dir")
    if mode is None and folder is None:
        return ["--compile-cache", "kept", *kept_dir] if _cpu_only(pytest_args) else []
    return kept_dir if mode == "kept" and folder is None else []


def _cpu_only(pytest_args: list[str]) -> bool:
    """Whether the run selects the cpu alone (``--device cpu``): no accelerator row, so nothing to pin either."""
    return [device.strip() for device in (_option(pytest_args, "--device") or "").split(",") if device.strip()] \
        == ["cpu"]


COMPILED_MARK = ".compiled"  # written into an environment's kept folder once its code is compiled


def _compile_before_the_pairs(environments: list[Environment], pytest_args: list[str], staging: Path,
                              echo: Callable[[str], None]) -> float:
    """Each environment whose workers keep their compiled code in the staging folder (``_compile_cache_args``: a
    cpu-only run, or ``--compile-cache kept`` without a folder; a folder the user names is left as they keep it)
    compiles it first, in an untimed process of its own, so that every pair's workers, the first included, load
    it; the seconds it took.

    Why. Compiling in a timed worker added spread beyond what the code itself varies by (2-core VM, resnet18_cifar
    quick tuned, A/A pairs: +8.3% for the pair whose workers compiled, then +1.6, -0.3, +1.0% for pairs that loaded
    the code; mnist_mlp standard tuned's detectable change stayed at 12-15% after 7 pairs because of its first).
    The process runs only the compiled rows (``-k tuned``), each once as a smoke run (``--benchmark-disable``:
    building the row compiles it, one round runs it), and times nothing. A folder marked compiled is not compiled
    again, so a resumed run goes straight to its pairs."""
    if "--no-compile" in pytest_args or "tuned" not in (_option(pytest_args, "--pipeline") or "tuned"):
        return 0.0
    started = time.monotonic()
    selected = _option(pytest_args, "-k")
    for env in environments:
        kept = _compile_cache_args(pytest_args, staging, env)
        folder = _option(kept, "--compile-cache-dir")  # given only where the workers keep their code in staging
        if folder is None or (Path(folder) / COMPILED_MARK).exists():
            continue
        command = [env.python, "-m", "pytest", str(REPO / "benchmarks"), *pytest_args, *kept, "--benchmark-disable",
                   "-k", "tuned" if selected is None else f"({selected}) and tuned", "-p", "no:cacheprovider",
                   "-q", "-rsfE"]
        echo(f"{env.label}: compiling its code in a process of its own before the pairs (not timed; every worker "
             f"of {env.label} loads it)")
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
        if result.returncode not in (0, 5):  # 5: pytest selected no row (nothing compiled to keep)
            raise DevicebenchError(f"{env.label}: compiling its code before the pairs failed (`{' '.join(command)}` "
                                   f"exited with {result.returncode}); the same command tries again. "
                                   f"{_failure_excerpt(result.stdout + result.stderr)}")
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / COMPILED_MARK).write_text(time.strftime("%Y-%m-%dT%H:%M:%S"))
    return time.monotonic() - started


def _option(pytest_args: list[str], name: str) -> str | None:
    """The value of pytest option ``name`` (``--name VALUE`` or ``--name=VALUE``; the last one given, as argparse
    reads it); None when not given."""
    value = None
    for index, arg in enumerate(pytest_args):
        if arg == name and index + 1 < len(pytest_args):
            value = pytest_args[index + 1]
        elif arg.startswith(f"{name}="):
            value = arg.split("=", 1)[1]
    return value


def _next_pair_seconds(staging: Path, done: int, rows_left: list[str] | None) -> float:
    """What the next pair should take: its start-up plus, for each row it will run, that row's mean time (building
    and rounds) in the pairs that ran it; the mean pair where the pairs' turns were not recorded or every row runs.

    Why by row. Once the slow rows reached their size the next pair runs only the rest: on the H200 the whole suite
    took ~3 min a pair and mnist_mlp's rows alone ~1.3 min, so judging by the mean pair stopped a 10-minute budget
    at 9m37s with ~1.3 min of work left that would have fit."""
    metas = [json.loads((staging / f"pair-{index:03d}.json").read_text()) for index in range(1, done + 1)
             if (staging / f"pair-{index:03d}.json").exists()]
    mean_pair = sum(meta["seconds"] for meta in metas) / len(metas) if metas else 0.0
    timed = [meta for meta in metas if meta.get("turns")]
    if rows_left is None or not timed:
        return mean_pair
    start_ups, row_seconds = [], {}
    for meta in timed:
        # [sequence, label, test, step, granted_at], in the order they were granted
        turns = [turn for turn in meta["turns"] if turn[4] is not None]
        if not turns:
            return mean_pair
        ends = [turn[4] for turn in turns[1:]] + [meta["seconds"]]
        start_ups.append(turns[0][4])
        by_row: dict[str, float] = {}
        for (_, _, test, _, granted_at), end in zip(turns, ends):
            by_row[test] = by_row.get(test, 0.0) + end - granted_at
        for test, seconds in by_row.items():
            row_seconds.setdefault(test, []).append(seconds)
    if any(test not in row_seconds for test in rows_left):
        return mean_pair
    return statistics.mean(start_ups) + sum(statistics.mean(row_seconds[test]) for test in rows_left)


def _rounds_wanted(calibration: Calibration | None, until: UntilTarget | None
                   ) -> Callable[[dict, int], int | None] | None:
    """The Scheduler's ``rounds_wanted`` for an ``--until`` run with a calibration: each row's rounds from its
    calibrated noise (``rounds_for_size``); None (the rounds ``--round-time`` gives) otherwise."""
    if calibration is None or until is None:
        return None

    def wanted(row: dict, default: int) -> int | None:
        identity = row["identity"]
        noise = calibration.noise_at(row["machine"], row["torch_version"], identity)
        if noise is None or noise.compiled_code != row.get("compiled_code"):  # the verdict would not use it
            return None
        return rounds_for_size(noise, until.for_pipeline(identity.get("pipeline")), default)

    return wanted


# Rows are sized to reach a fraction of their size, so that this run's own pairs, pooled with the calibration's,
# may spread a little more than it did and still get there. A row planned for two pairs is one that reaches its
# size anyway and is only given fewer rounds: planned to half its size, as missing costs a whole pair.
TWO_PAIR_MARGIN = 0.5
THREE_PAIR_MARGIN = 0.9


def rounds_for_size(noise: Noise, size: float, default: int) -> int | None:
    """How many rounds a worker should time of a row whose calibration records its round noise, so that the
    row's smallest detectable change reaches ``size`` in few pairs; None when the calibration cannot say.

    A pair's variance is the per-process part plus round noise over the rounds (``Noise.pair_variance``); after
    n pairs pooled with the calibration, the detectable change is ``detection_factor(df) * sqrt(variance / n)``
    (significance.py). So:

    - a row that reaches TWO_PAIR_MARGIN of its size in MIN_PAIRS_CALIBRATED pairs with no more than ``default``
      rounds gets the rounds that does (H200: resnet18_cifar resident and tuned, 33 and 113 rounds a worker by
      ``--round-time``, were sized to 5 and reached 2.0% and 2.8% in two pairs);
    - else the rounds that reach THREE_PAIR_MARGIN of it in MIN_PAIRS_FOR_UNTIL pairs, no fewer than ``default``
      (H200: mnist_mlp seed, nearly all round noise, 15 where ``--round-time`` gives 10);
    - a row whose per-process part alone is more than that many pairs can average gets the rounds at which its
      round noise is down to its per-process part (more buy little), no fewer than ``default`` (H200, workers
      free: mnist_mlp resident, 2.8% per process, and resnet18_cifar seed, 5.8%).
    """
    per_process = noise.per_process_variance()
    if per_process is None:
        return None
    from devicebench import significance

    round_variance = noise.round_variance()  # a pair's round noise at one round

    def room(pairs: int, target: float) -> float:
        """The round noise a pair may have so that ``pairs`` pairs detect ``target``."""
        factor = significance.detection_factor(pairs - 1 + noise.pair_df)
        return pairs * (math.log1p(target) / factor) ** 2 - per_process

    two = room(MIN_PAIRS_CALIBRATED, TWO_PAIR_MARGIN * size)
    if two > 0 and math.ceil(round_variance / two) <= default:
        return max(1, math.ceil(round_variance / two))
    three = room(MIN_PAIRS_FOR_UNTIL, THREE_PAIR_MARGIN * size)
    if three > 0:
        return max(default, math.ceil(round_variance / three))
    return max(default, math.ceil(round_variance / per_process)) if per_process > 0 else default


def _pair_seconds(staging: Path, index: int) -> float:
    meta = staging / f"pair-{index:03d}.json"
    return json.loads(meta.read_text())["seconds"] if meta.exists() else 0.0


def _progress_by_row(staging: Path, environments: list[Environment], pairs: int,
                     calibration: Calibration | None) -> dict[str, RowProgress]:
    """Each row's smallest detectable change after ``pairs`` pairs: the worst over each environment against the
    first (None where a row cannot be judged), with this machine's calibration where it has the row."""
    if pairs < 2 or len(environments) < 2:
        return {}
    from devicebench import significance

    interleave_id = "in progress"
    merged = [_merged(staging, env, pairs, interleave_id) for env in environments]
    runs = [results.Run(staging, data["machine_info"], "", results.rows_of(data)) for data in merged]
    nodeids = {bench["name"]: bench.get("fullname") for bench in merged[0]["benchmarks"]}
    found: dict[str, RowProgress] = {}
    for row in runs[0].rows:
        worst: float | None = 0.0
        calibrated = True
        forecast = None
        for other_run in runs[1:]:
            other = next((candidate for candidate in other_run.rows if candidate.test == row.test), None)
            noise = None if calibration is None or other is None else \
                calibration.noise_between(runs[0], row, other_run, other)
            verdict = None if other is None else significance.judge(row, other, noise=noise)
            detectable = None if verdict is None else verdict.detectable
            calibrated = calibrated and verdict is not None and verdict.pooled
            worst = None if detectable is None or worst is None else max(worst, detectable)
            per_process = noise.per_process_variance() if verdict is not None and verdict.pooled else None
            if per_process is not None:
                rounds = round(statistics.median(len(times) for times in other.processes))
                candidate = Forecast(noise.pair_variance(rounds), noise.pair_df, rounds, per_process)
                if forecast is None or candidate.pair_variance > forecast.pair_variance:
                    forecast = candidate
        found[row.test] = RowProgress(row.test, nodeids.get(row.test), row.extra.get("pipeline"),
                                      len(row.processes), worst, calibrated, forecast)
    return found


def _progress_lines(progress: dict[str, RowProgress], pairs: int, until: UntilTarget | None) -> str:
    marks = []
    for row in progress.values():
        figure = "n/a" if row.detectable is None else f"{row.detectable:.1%}"
        reached = " (reached)" if until is not None and row.reached(until) else ""
        marks.append(f"{row.test.removeprefix('test_')} {figure}{reached}")
    return f"    after {pairs} pairs, smallest detectable change: " + "; ".join(marks)


def _until_report(progress: dict[str, RowProgress], until: UntilTarget, pairs: int, spent: float) -> str:
    if not progress:
        return (f"--until {until.describe()}: not judged: {pairs} pair(s) measured ({_clock(spent)}), and a "
                f"smallest detectable change needs at least 2")
    reached = [row for row in progress.values() if row.reached(until)]
    missed = [row for row in progress.values() if not row.reached(until)]
    lines = [f"--until {until.describe()}: {len(reached)} of {len(progress)} rows reached it in {pairs} pairs "
             f"({_clock(spent)} measured)"]
    lines += [f"    reached: {row.test} ({row.detectable:.1%} from {row.pairs} pairs)" for row in reached]
    lines += [f"    not reached: {row.test} ({'not judged' if row.detectable is None else f'{row.detectable:.1%}'}"
              f" from {row.pairs} pairs, asked {until.for_pipeline(row.pipeline):.1%}{row.forecast_text(until)})"
              for row in missed]
    return "\n".join(lines)


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s"


def _claim_staging(staging: Path, plan: dict) -> None:
    """Create the staging folder, or resume one left by the same command; refuse one left by another that has
    measured something, and take over one that has not."""
    plan_file = staging / "plan.json"
    if plan_file.exists():
        saved = json.loads(plan_file.read_text())
        saved.pop("interleave_id", None)
        if saved == plan:
            return
        if any(staging.glob("*-[0-9][0-9][0-9].json")):
            raise UsageError(f"{staging} holds the unfinished processes of another `devicebench run` (other "
                             f"arguments or environments); re-run that command to finish it, delete the folder, "
                             f"or choose another --name")
        # Another command's folder with nothing measured in it (it failed at once, e.g. on a mistyped option):
        # nothing to lose, so this command takes it over rather than asking to delete it.
        shutil.rmtree(staging)
    staging.mkdir(parents=True, exist_ok=True)
    # Names the rows' worker pairs: pairs of another run (another id) are never matched with these.
    plan_file.write_text(json.dumps({**plan, "interleave_id": f"{staging.name.strip('.')}@{time.time():.0f}"}))


def _pytest_command(env: Environment, pytest_args: list[str], json_file: Path) -> list[str]:
    return [env.python, "-m", "pytest", str(REPO / "benchmarks"), *pytest_args, f"--benchmark-json={json_file}",
            "-p", "no:cacheprovider", "-q", "-rsfE"]


def _failure_excerpt(pytest_output: str, last_lines: int = 15) -> str:
    """What a failed pytest process printed, cause first.

    The cause (the exception's ``E`` lines, the ``FAILED``/``ERROR`` lines of ``-rfE``) is printed far above the
    end, before the benchmark tables and summaries that plugins print, so the last lines alone often do not name
    it (a missing ranger21 on the device showed only the timing table)."""
    lines = pytest_output.strip().splitlines()
    causes = list(dict.fromkeys(line for line in lines
                                if line.startswith(("E  ", "FAILED ", "ERROR ")) and line not in lines[-last_lines:]))
    cause = "The cause, as pytest printed it:\n" + "\n".join(causes[:8]) + "\n" if causes else ""
    return cause + "Its output ended:\n" + "\n".join(lines[-last_lines:])


def _skip_reasons(pytest_output: str) -> str:
    """The SKIPPED lines of a pytest run (``-rs``), indented, for a run in which no row ran."""
    reasons = [line for line in pytest_output.splitlines() if line.startswith("SKIPPED")]
    return "\n".join(f"    {line}" for line in reasons) or "    (pytest reported no skip reasons)"


def _run_one(env: Environment, pytest_args: list[str], target: Path) -> str | None:
    """One pytest process into ``target``; returns its skip reasons instead when no row ran at all."""
    partial = target.with_suffix(".part")
    command = _pytest_command(env, pytest_args, partial)
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if result.returncode == 0 and not partial.exists():  # pytest-benchmark writes no file when no row ran
        return _skip_reasons(result.stdout)
    if result.returncode != 0 or not partial.exists():
        partial.unlink(missing_ok=True)
        raise DevicebenchError(f"{env.label}: `{' '.join(command)}` exited with {result.returncode}; the processes "
                               f"finished so far are kept and the same command resumes after them. "
                               f"{_failure_excerpt(result.stdout + result.stderr)}")
    partial.replace(target)
    return None


def merge_processes(process_runs: list[dict], env: Environment, interleave_id: str | None = None) -> dict:
    """One pytest-benchmark-shaped run from several processes' runs: each row keeps every process's rounds.

    ``interleave_id``: the processes were the workers of an interleaved run, process i of worker pair i; each
    process entry keeps its pair and round turns, and each row the id, so the verdict can pair them."""
    first = process_runs[0]
    for field in SAME_IN_EVERY_PROCESS:
        values = {json.dumps(run["machine_info"].get(field), sort_keys=True) for run in process_runs}
        if len(values) > 1:
            raise DevicebenchError(f"{env.label}: its processes disagree on {field} ({', '.join(sorted(values))}); "
                                   f"runs of different machines or torch versions are never merged")
    names = list(dict.fromkeys(bench["name"] for run in process_runs for bench in run["benchmarks"]))
    benchmarks = []
    for name in names:
        rows = [(index, next((b for b in run["benchmarks"] if b["name"] == name), None))
                for index, run in enumerate(process_runs, 1)]
        present = [(index, row) for index, row in rows if row is not None]
        # Worker pairs of an --until run leave out the rows that reached their size (_run_pairs), so a row may
        # stop before the last pair; it keeps each pair's number. Plain processes all run the same rows.
        missing = rows[0][1] is None if interleave_id is not None else len(present) < len(rows)
        if missing:
            raise DevicebenchError(f"{env.label}: row {name} is missing from some processes; run again")
        benchmarks.append(_merge_row(present, interleave_id))
    from pytest_benchmark import __version__ as pytest_benchmark_version

    return {"machine_info": first["machine_info"], "commit_info": first.get("commit_info", {}),
            "benchmarks": benchmarks, "datetime": first.get("datetime"), "version": pytest_benchmark_version,
            "devicebench_run": {"interrupted": False, "rows": len(benchmarks), "processes": len(process_runs),
                                "environment": env.label, "python": env.python}}


def _merge_row(numbered_rows: list[tuple[int, dict]], interleave_id: str | None) -> dict:
    """One row from its processes' rows, each numbered by its process (its worker pair, in interleaved runs)."""
    rows = [row for _, row in numbered_rows]
    extras = [row["extra_info"] for row in rows]
    extra = dict(extras[0])
    extra["processes"] = [{field: e.get(field) for field in PER_PROCESS_FIELDS} for e in extras]
    if interleave_id is not None:
        extra["interleave_id"] = interleave_id
        for (pair, _), process in zip(numbered_rows, extra["processes"]):
            process["pair"] = pair
    extra.pop("round_sequence", None)  # per process, kept in each process entry
    for field in ("round_seconds", "train_seconds", "val_seconds"):
        extra[field] = [value for e in extras for value in e[field]]
    process_medians = [statistics.median(e["train_seconds"]) for e in extras]
    extra["samples_per_s"] = extra["samples_per_round"] / statistics.median(process_medians)
    extra["loader_wait_fraction"] = statistics.fmean(e["loader_wait_fraction"] for e in extras)
    reasons = [f"process {i}: {e['unstable_reason']}" for i, e in enumerate(extras, 1) if e.get("unstable")]
    between = stability.assess_processes(process_medians)
    extra["unstable"] = bool(reasons or between)
    extra["unstable_reason"] = "; ".join(filter(None, [between, *reasons])) or None
    for field in ("loader_wait_fraction_per_round", "train_loss_per_round", "val_loss_per_round"):
        extra.pop(field, None)  # per process; the merged row keeps the timings, not every loss curve
    return {**rows[0], "extra_info": extra, "stats": _stats(extra["round_seconds"])}


def _stats(values: list[float]) -> dict:
    """pytest-benchmark's statistics of the pooled rounds, so its own tools can read the merged file."""
    from pytest_benchmark.stats import Stats

    stats = Stats()
    for value in values:
        stats.update(value)
    return {**stats.as_dict(), "data": values}




def _summary(run: dict) -> str:
    parts = [f"{b['name'].removeprefix('test_')} {b['extra_info']['samples_per_s']:,.0f}/s"
             f"{_rounds_timed(b['extra_info'])}"
             for b in run["benchmarks"] if "samples_per_s" in b.get("extra_info", {})]
    return "; ".join(parts) or "no rows (all skipped?)"


def _rounds_timed(extra: dict) -> str:
    """' (N rounds)' for a worker's row, where rounds are sized per row (interleave.Scheduler._size)."""
    rounds = extra.get("train_seconds")
    return f" ({len(rounds)} rounds)" if isinstance(rounds, list) and "round_sequence" in extra else ""


def _elapsed(since: float) -> str:
    return _clock(time.monotonic() - since)
