"""A worker process of ``devicebench run``: measures the rows its task names and writes them to one file.

The coordinator (coordinator.py) writes a task (``Task``: the rows, their options, the worker's turn pipe and core,
where to write) and starts this module's ``main`` on it in an environment's Python (``command``). The worker
answers in fields, never in printed text: each row comes back measured, skipped (with the reason) or failed (with
the error). Its printed lines are a log for people. pyperf's manager and worker are the model.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import devicebench
from devicebench import runfile

WORKER_FORMAT = 1  # of the task and the worker's file: coordinator and worker come from one devicebench


@dataclass
class Task(runfile.TaskFile):
    rows: list[dict]  # rows.RowSpec fields
    options: dict  # options.RowOptions fields
    output: str  # the worker's file, written whole when it ends
    turn_pipe: list[int] | None = None  # [read fd, write fd]: take turns with the other workers (turns.py)
    round_core: int | None = None  # the core an accelerator row's rounds run on (affinity.py)
    compile_cache: str = "fresh"  # compile_cache.MODES
    compile_cache_dir: str | None = None
    count_steps: bool = True  # the first pair counts; later workers would repeat the same counts (counts.py)
    parity_check: bool = True  # likewise the parity check of each accelerator and workload (parity.py)
    compile_only: bool = False  # one untimed round per row: compile the code a kept cache will hold
    build_together: list[str] = field(default_factory=list)  # rows it may build while the others do (interleave.py)
    format: int = WORKER_FORMAT
    FORMAT: ClassVar[int] = WORKER_FORMAT
    WHAT: ClassVar[str] = "devicebench worker: task"


def command(python: str, task_path: Path) -> list[str]:
    """How an environment's Python runs a worker: with the coordinator's devicebench (``bootstrap``), so every
    environment is measured by the same benchmark code (an environment needs torch and the requirements only)."""
    folder = import_folder(task_path.parent / "import")
    return [python, "-c", bootstrap("from devicebench.worker import main; sys.exit(main(sys.argv[1:]))", folder),
            str(task_path)]


def import_folder(folder: Path, package: Path | None = None) -> Path:
    """``folder``, holding only a link named devicebench to this package (or ``package``): put first on a worker's
    path, it imports this devicebench and nothing else. The package's parent would be, where devicebench is
    installed rather than checked out, this Python's site-packages, and every environment would import this
    Python's torch. On the path, not loaded by file: processes a worker spawns (DataLoader workers) import it too."""
    link, target = folder / "devicebench", Path(package or Path(devicebench.__file__).resolve().parent)
    folder.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() and Path(os.readlink(link)) != target:
        link.unlink()  # left by another devicebench
    if not link.is_symlink():
        link.symlink_to(target, target_is_directory=True)
    return folder


def bootstrap(then: str, folder: Path) -> str:
    """Python code that puts ``folder`` (``import_folder``) first on the path, then runs ``then``."""
    return f"import sys; sys.path.insert(0, {str(folder)!r})\n{then}"


# What every row of a worker imports; a failure here is the environment's, and no row could run.
WORKER_MODULES = ("devicebench.worker", "devicebench.measure", "devicebench.rows", "devicebench.environment")


@dataclass(frozen=True)
class Probe:
    """What an environment's Python brings to a worker: its torch, where it lives, and the imports it lacks."""

    torch: str | None
    missing: tuple[str, ...]  # "name: error" for each module every row needs that failed: no row can run
    prefix: str = ""  # sys.prefix: one environment however its Python is spelled
    rows_skip: tuple[str, ...] = ()  # "name: error" for each workload package that failed: those rows skip


def probe(python: str) -> Probe:
    """Import what a worker needs in ``python``, as a worker would (``bootstrap``)."""
    import json
    import subprocess
    import tempfile

    from devicebench.workloads import all_workloads

    # What some workloads need (their REQUIRES): without it those rows skip, saying so (rows.missing_requirement).
    packages = sorted({name for module in all_workloads().values() for name in getattr(module, "REQUIRES", ())})
    report = ("import importlib, json\n"
              "def failures(names):\n"
              "    found = []\n"
              "    for name in names:\n"
              "        try: importlib.import_module(name)\n"
              "        except Exception as error: found.append(f'{name}: {type(error).__name__}: '\n"
              "                                                + (str(error).splitlines() or [''])[0])\n"
              "    return found\n"
              f"missing, rows_skip = failures({WORKER_MODULES!r}), failures({packages!r})\n"
              "torch = sys.modules.get('torch')\n"
              "print(json.dumps({'torch': getattr(torch, '__version__', None), 'missing': missing, "
              "'prefix': sys.prefix, 'rows_skip': rows_skip}))")
    with tempfile.TemporaryDirectory(prefix="devicebench-probe-") as folder:
        script = bootstrap(report, import_folder(Path(folder)))
        result = subprocess.run([python, "-c", script], capture_output=True, text=True)
    try:
        found = json.loads(result.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        return Probe(None, (f"python: exit {result.returncode}: {tail[0]}",))
    return Probe(found["torch"], tuple(found["missing"]), found["prefix"], tuple(found["rows_skip"]))


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m devicebench.worker TASK.json (started by devicebench run)", file=sys.stderr)
        return 2
    task = Task.read(Path(argv[0]))
    from devicebench import compile_cache, signals

    undo_signals = signals.stop_like_ctrl_c()  # SIGTERM/SIGHUP keep finished rows, as Ctrl-C does
    undo_cache = compile_cache.use(task.compile_cache, task.compile_cache_dir)
    finished: list[dict] = []
    interrupted = False
    try:
        measure_rows(task, finished)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        undo_cache()
        undo_signals()
    from devicebench import environment

    runfile.write_json_atomically(Path(task.output), {
        "devicebench": {"schema": runfile.SCHEMA, "worker": True, "interrupted": interrupted},
        "machine_info": environment.machine_info(), "datetime": dt.datetime.now(dt.timezone.utc).isoformat(),
        "rows": finished})
    if interrupted:
        return 130
    return 1 if any(row["status"] == "failed" for row in finished) else 0


def measure_rows(task: Task, finished: list[dict]) -> None:
    """Each row in turn into ``finished``; stops at the first that fails (its pair is lost anyway)."""
    import torch

    from devicebench import devices, measure, rows
    from devicebench.errors import DevicebenchError
    from devicebench.options import RowOptions
    from devicebench.turns import TurnPipe

    options = RowOptions.from_dict(task.options)
    turns = TurnPipe(*task.turn_pipe) if task.turn_pipe else None
    statuses: dict[str, devices.DeviceStatus] = {}
    parity_fields: dict[tuple[str, str], dict] = {}
    for index, values in enumerate(task.rows):
        spec = rows.RowSpec(**values)
        if turns is not None:
            turns.begin_row(index, spec.name, together=spec.name in task.build_together)
        status = statuses.setdefault(spec.device, devices.probe(spec.device))
        workload = spec.load()
        reason = status.skip_reason if not status.available else \
            rows.skip_reason(workload, spec.device, options.scale)
        if reason is not None:
            print(f"{spec.name}: skipped: {reason}", flush=True)
            finished.append({"name": spec.name, "status": "skipped", "reason": reason})
            continue
        config = rows.run_config(spec, options, task.round_core, task.compile_cache)
        try:
            if task.compile_only:
                measure.smoke_round(workload, config)
                finished.append({"name": spec.name, "status": "compiled"})
                continue
            checks = {}
            if spec.device != "cpu" and task.parity_check and options.parity_check:
                key = (spec.device, spec.workload)
                if key not in parity_fields:
                    parity_fields[key] = measure.parity_fields(workload, torch.device(spec.device))
                checks = parity_fields[key]
            trace = measure.trace_path(options.profile_dir or Path(task.output).parent, spec.name) \
                if options.profile else None
            extra = measure.measure_row(workload, config, status.name, progress=_progress(spec.name),
                                        profile_trace=trace, turns=turns, checks=checks,
                                        count_steps=task.count_steps)
        except DevicebenchError as error:
            finished.append({"name": spec.name, "status": "failed", "reason": str(error)})
            print(f"{spec.name}: failed: {error}", flush=True)
            return
        except Exception as error:  # noqa: BLE001 - reported as the row's failure, with its traceback in the log
            traceback.print_exc()
            finished.append({"name": spec.name, "status": "failed", "reason": f"{type(error).__name__}: {error}"})
            return
        extra["processes"][0]["built_together"] = spec.name in task.build_together
        finished.append({"name": spec.name, "nodeid": spec.nodeid, "status": "measured", "extra": extra})
        print(f"{spec.name}: {extra['samples_per_s']:,.0f} samples/s over {len(extra['processes'][0]['round_seconds'])}"
              f" rounds", flush=True)


def _progress(name: str):
    def report(number: int, total: int, warmup_rounds: int, stats, samples: int) -> None:
        if number == warmup_rounds and warmup_rounds:
            print(f"{name}: warm-up done ({stats.seconds:.3g} s a round)", flush=True)

    return report


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
