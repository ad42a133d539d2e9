"""A run's staging folder (``OUTPUT/.NAME.processes``): its workers' files until the run is merged, owned by one run.

An interrupted run leaves its finished workers' files here and the same command resumes after them. A second run
of the same name and folder while the first is alive is refused at once, naming the other process (an exclusive
lock held for the run's life); a folder left by a run that died is resumed, or taken over where it holds nothing
measured. Only ``merge`` turns these files into a run file, and only when all are in.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from devicebench import runfile, schema, stability, tuning
from devicebench.errors import DevicebenchError, UsageError

# machine_info fields that must agree between the processes merged into one run (pyperf refuses the same).
SAME_IN_EVERY_PROCESS = ("node", "cpu_name", "torch_version", "cuda_version", "accelerators")


@dataclass
class Staging:
    folder: Path
    lock: object  # the open lock file: the folder is ours while it is held

    def worker_file(self, label: str, index: int) -> Path:
        return self.folder / f"{label}-{index:03d}.json"

    def log(self, label: str, index: int) -> Path:
        return self.folder / f"{label}-{index:03d}.log"

    def task_file(self, label: str, index: int) -> Path:
        return self.folder / f"{label}-{index:03d}.task.json"

    def no_rows(self, label: str) -> Path:
        """Marks an environment in which every row skipped itself; it holds the reasons."""
        return self.folder / f"{label}.no-rows"

    def pair_meta(self, index: int) -> Path:
        return self.folder / f"pair-{index:03d}.json"

    def compile_folder(self, label: str) -> Path:
        return self.folder / f"compile-cache-{label}"

    def plan(self) -> dict:
        return json.loads((self.folder / "plan.json").read_text())

    def pair_seconds(self, index: int) -> float:
        meta = self.pair_meta(index)
        return json.loads(meta.read_text())["seconds"] if meta.exists() else 0.0

    def built_alike(self, labels: list[str]) -> list[str]:
        """The rows whose build chose nothing by timing in the first pair's worker of every one of ``labels``
        (tuning.build_chooses_by_timing): later pairs' workers may build them side by side."""
        found: set[str] | None = None
        for label in labels:
            path = self.worker_file(label, 1)
            if not path.exists():
                return []
            rows = json.loads(path.read_text())["rows"]
            alike = {row["name"] for row in rows
                     if row["status"] == "measured" and not tuning.build_chooses_by_timing(row["extra"])}
            found = alike if found is None else found & alike
        return sorted(found or ())

    def release(self, remove: bool) -> None:
        if remove:
            shutil.rmtree(self.folder, ignore_errors=True)
        self.lock.close()


def claim(folder: Path, plan: dict) -> Staging:
    """Own ``folder`` for this run: create it, or resume one left by the same command; refuse one another live run
    holds, or one left by another command that has measured something, and take over one that has not."""
    plan = json.loads(json.dumps(plan))  # as it reads back from plan.json (tuples become lists)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = open(folder / "lock", "a+")
    except OSError as error:
        raise UsageError(f"cannot write under {folder.parent} ({error.strerror or error}): give an --output-dir "
                         f"this user can write to") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.seek(0)
        holder = lock.read().strip() or "another process"
        lock.close()
        raise UsageError(f"{folder} belongs to a `devicebench run` still running ({holder}); wait for it to end, "
                         f"or give this run another --name or --output-dir") from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}")
    lock.flush()
    staging = Staging(folder, lock)
    plan_file = folder / "plan.json"
    if plan_file.exists():
        try:
            saved = json.loads(plan_file.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            saved = {"unreadable": True}
        saved.pop("interleave_id", None)
        if saved == plan:
            return staging
        if any(folder.glob("*-[0-9][0-9][0-9].json")):
            lock.close()
            if "rows" not in saved:
                raise UsageError(f"{folder} holds the unfinished workers of another devicebench version's run, which "
                                 f"this one cannot resume; delete the folder, or choose another --name")
            raise UsageError(f"{folder} holds the unfinished workers of another `devicebench run` (other options or "
                             f"environments); re-run that command to finish it, delete the folder, or choose "
                             f"another --name")
        # Another command's folder with nothing measured in it (it failed at once): nothing to lose, so take it.
        for path in folder.iterdir():
            if path.name != "lock":
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    # Names the rows' worker pairs: pairs of another run (another id) are never matched with these.
    runfile.write_json_atomically(plan_file, {**plan, "interleave_id": f"{folder.name.strip('.')}@{time.time():.0f}"})
    return staging


def merge(worker_files: list[tuple[int, dict]], label: str, python: str, interleave_id: str | None) -> dict:
    """One run file from an environment's worker files, each numbered by its process (its worker pair): each
    row keeps every process's rounds, once. Refuses processes of different machines or torch versions."""
    first = worker_files[0][1]
    for field in SAME_IN_EVERY_PROCESS:
        values = {json.dumps(data["machine_info"].get(field), sort_keys=True) for _, data in worker_files}
        if len(values) > 1:
            raise DevicebenchError(f"{label}: its processes disagree on {field} ({', '.join(sorted(values))}); "
                                   f"runs of different machines or torch versions are never merged")
    if not worker_files:
        raise DevicebenchError(f"{label}: no worker of this environment measured anything; nothing to merge")
    measured = [(index, {row["name"]: row["extra"] for row in data["rows"] if row["status"] == "measured"})
                for index, data in worker_files]
    nodeids = {row["name"]: row.get("nodeid") for _, data in worker_files for row in data["rows"]}
    names = list(dict.fromkeys(name for _, rows in measured for name in rows))
    benchmarks = []
    for name in names:
        present = [(index, rows[name]) for index, rows in measured if name in rows]
        # Worker pairs of an --until run leave out the rows that reached their size, so a row may stop before the
        # last pair; it keeps each pair's number. Plain processes all run the same rows.
        missing = name not in measured[0][1] if interleave_id is not None else len(present) < len(measured)
        if missing:
            raise DevicebenchError(f"{label}: row {name} is missing from some processes; run again")
        benchmarks.append(_merge_row(name, nodeids.get(name), present, interleave_id))
    return {"devicebench": {"schema": runfile.SCHEMA, "interrupted": False, "rows": len(benchmarks),
                            "processes": len(worker_files), "environment": label, "python": python},
            "machine_info": first["machine_info"], "commit_info": {}, "datetime": first.get("datetime"),
            "version": _pytest_benchmark_version(), "benchmarks": benchmarks}


def _merge_row(name: str, nodeid: str | None, numbered: list[tuple[int, dict]], interleave_id: str | None) -> dict:
    extras = [extra for _, extra in numbered]
    extra = {key: value for key, value in extras[0].items() if key != "processes"}
    extra["processes"] = []
    for index, row in numbered:
        process = {key: value for key, value in row["processes"][0].items() if key not in runfile.PER_ROUND_FIELDS}
        if interleave_id is not None:
            process["pair"] = index
        extra["processes"].append(process)
    if interleave_id is not None:
        extra["interleave_id"] = interleave_id
    process_medians = [statistics.median(process["train_seconds"]) for process in extra["processes"]]
    extra["samples_per_s"] = extra["samples_per_round"] / statistics.median(process_medians)
    extra.update(schema.derived_speeds(extra))
    extra["loader_wait_fraction"] = statistics.fmean(e["loader_wait_fraction"] for e in extras)
    reasons = [f"process {i}: {e['unstable_reason']}" for i, e in enumerate(extras, 1) if e.get("unstable")]
    between = stability.assess_processes(process_medians)
    extra["unstable"] = bool(reasons or between)
    extra["unstable_reason"] = "; ".join(filter(None, [between, *reasons])) or None
    pooled = [value for process in extra["processes"] for value in process["round_seconds"]]
    params = name.partition("[")[2]
    return {"group": f"{extra['workload']} ({extra['scale']})", "name": name, "fullname": nodeid or name,
            "params": None, "param": params.rstrip("]") or None, "extra_info": extra, "options": {},
            "stats": runfile.stats_summary(pooled)}


def _pytest_benchmark_version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("pytest-benchmark")
    except metadata.PackageNotFoundError:
        return None
