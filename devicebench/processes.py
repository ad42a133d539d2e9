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
import os
import shutil
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from devicebench import stability
from devicebench.errors import DevicebenchError, UsageError

REPO = Path(__file__).resolve().parents[1]  # the checkout: benchmarks/, conftest.py and fixtures/ live here
# machine_info fields that must agree between the processes merged into one run (pyperf refuses the same).
SAME_IN_EVERY_PROCESS = ("node", "cpu_name", "torch_version", "cuda_version", "devicebench_schema", "accelerators")
PER_PROCESS_FIELDS = ("round_seconds", "train_seconds", "val_seconds", "samples_per_s", "compile_s",
                      "loader_wait_fraction", "unstable_reason")


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


def run_interleaved(environments: list[Environment], processes: int, pytest_args: list[str], output_dir: Path,
                    name: str, echo: Callable[[str], None] = print,
                    sweep_positions: dict[str, int] | None = None) -> list[Path]:
    """Run ``processes`` processes per environment, alternating; write one merged run per environment.

    ``sweep_positions`` (from ``devicebench sweep``) records each environment's place in the sweep, so that
    ``history`` can order environments that share a torch version.
    """
    if processes < 1:
        raise UsageError(f"--processes {processes}: give 1 or more")
    labels = [env.label for env in environments]
    if len(set(labels)) != len(labels):
        raise UsageError(f"--env labels must differ (got {', '.join(labels)}); e.g. --env A=... --env B=...")
    staging = Path(output_dir) / f".{name}.processes"
    _claim_staging(staging, {"pytest_args": pytest_args, "environments": [vars(env) for env in environments]})
    total, started = processes * len(environments), time.monotonic()
    for index in range(1, processes + 1):
        for position, env in enumerate(environments):
            done = (index - 1) * len(environments) + position
            target, no_rows = staging / f"{env.label}-{index:03d}.json", staging / f"{env.label}.no-rows"
            where = f"[{done + 1}/{total}] {env.label} process {index}/{processes}"
            if no_rows.exists():
                continue
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
    written = []
    for env in environments:
        if (staging / f"{env.label}.no-rows").exists():
            continue
        files = [staging / f"{env.label}-{index:03d}.json" for index in range(1, processes + 1)]
        merged = merge_processes([json.loads(path.read_text()) for path in files], env)
        if sweep_positions is not None:
            merged["devicebench_run"]["sweep_position"] = sweep_positions[env.label]
        written.append(_write_atomically(Path(output_dir) / f"{name}-{env.label}.json", merged))
    shutil.rmtree(staging)
    echo(f"{total} processes in {_elapsed(started)}; runs written: {', '.join(map(str, written))}")
    return written


def _claim_staging(staging: Path, plan: dict) -> None:
    """Create the staging folder, or resume one left by the same command; refuse one left by another."""
    plan_file = staging / "plan.json"
    if plan_file.exists():
        if json.loads(plan_file.read_text()) != plan:
            raise UsageError(f"{staging} holds the unfinished processes of another `devicebench run` (other "
                             f"arguments or environments); re-run that command to finish it, delete the folder, "
                             f"or choose another --name")
        return
    staging.mkdir(parents=True, exist_ok=True)
    plan_file.write_text(json.dumps(plan))


def _run_one(env: Environment, pytest_args: list[str], target: Path) -> str | None:
    """One pytest process into ``target``; returns its skip reasons instead when no row ran at all."""
    partial = target.with_suffix(".part")
    command = [env.python, "-m", "pytest", str(REPO / "benchmarks"), *pytest_args, f"--benchmark-json={partial}",
               "-p", "no:cacheprovider", "-q", "-rs"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if result.returncode == 0 and not partial.exists():  # pytest-benchmark writes no file when no row ran
        reasons = [line for line in result.stdout.splitlines() if line.startswith("SKIPPED")]
        return "\n".join(f"    {line}" for line in reasons) or "    (pytest reported no skip reasons)"
    if result.returncode != 0 or not partial.exists():
        partial.unlink(missing_ok=True)
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise DevicebenchError(f"{env.label}: `{' '.join(command)}` exited with {result.returncode}; the processes "
                               f"finished so far are kept and the same command resumes after them. Its output "
                               f"ended:\n{tail}")
    partial.replace(target)
    return None


def merge_processes(process_runs: list[dict], env: Environment) -> dict:
    """One pytest-benchmark-shaped run from several processes' runs: each row keeps every process's rounds."""
    first = process_runs[0]
    for field in SAME_IN_EVERY_PROCESS:
        values = {json.dumps(run["machine_info"].get(field), sort_keys=True) for run in process_runs}
        if len(values) > 1:
            raise DevicebenchError(f"{env.label}: its processes disagree on {field} ({', '.join(sorted(values))}); "
                                   f"runs of different machines or torch versions are never merged")
    names = [bench["name"] for bench in first["benchmarks"]]
    benchmarks = []
    for name in names:
        rows = [next((b for b in run["benchmarks"] if b["name"] == name), None) for run in process_runs]
        if any(row is None for row in rows):
            raise DevicebenchError(f"{env.label}: row {name} is missing from some processes; run again")
        benchmarks.append(_merge_row(rows))
    from pytest_benchmark import __version__ as pytest_benchmark_version

    return {"machine_info": first["machine_info"], "commit_info": first.get("commit_info", {}),
            "benchmarks": benchmarks, "datetime": first.get("datetime"), "version": pytest_benchmark_version,
            "devicebench_run": {"interrupted": False, "rows": len(benchmarks), "processes": len(process_runs),
                                "environment": env.label, "python": env.python}}


def _merge_row(rows: list[dict]) -> dict:
    extras = [row["extra_info"] for row in rows]
    extra = dict(extras[0])
    extra["processes"] = [{field: e.get(field) for field in PER_PROCESS_FIELDS} for e in extras]
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


def _write_atomically(path: Path, data: dict) -> Path:
    partial = path.with_name(path.name + ".part")
    partial.write_text(json.dumps(data, indent=1))
    partial.replace(path)
    return path


def _summary(run: dict) -> str:
    parts = [f"{b['name'].removeprefix('test_')} {b['extra_info']['samples_per_s']:,.0f}/s"
             for b in run["benchmarks"] if "samples_per_s" in b.get("extra_info", {})]
    return "; ".join(parts) or "no rows (all skipped?)"


def _elapsed(since: float) -> str:
    seconds = int(time.monotonic() - since)
    return f"{seconds // 60}m{seconds % 60:02d}s"
