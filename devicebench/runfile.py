"""The run file: one JSON file per run, in pytest-benchmark's shape, with devicebench's schema version at its top.

    {"devicebench": {"schema": 3, "interrupted": false, ...},   one version for the whole file
     "machine_info": {...}, "datetime": "...", "commit_info": {...}, "version": pytest-benchmark's,
     "benchmarks": [{"name": "test_mnist_mlp[cpu-seed]", "stats": {...summary...},
                     "extra_info": {row fields (schema.py), "processes": [{"round_seconds": [...], ...}]}}]}

Every round time is stored once, in the entry of the process that timed it; ``stats`` holds pytest-benchmark's
summary of the pooled rounds (no raw copy), so ``pytest-benchmark compare`` still reads the file. Files of older
schemas are migrated when read (``migrate``, as asv's ``update_to_N``), so the rest of the code knows one format;
newer ones are refused. Every file is written whole or not at all (``write_json_atomically``).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import math
import os
import stat
import statistics
from pathlib import Path
from typing import ClassVar

from devicebench.errors import DevicebenchError

SCHEMA = 3  # bump when a field changes meaning, and add update_to_<N> below
# Fields of one process's entry in a row's ``processes`` (schema.py says what each holds).
PROCESS_FIELDS = ("round_seconds", "train_seconds", "val_seconds", "samples_per_s", "compile_s",
                  "loader_wait_fraction", "unstable_reason", "round_sequence", "pair", "median_page_faults",
                  "median_preemptions", "cpu_steal_fraction", "built_together")
PER_ROUND_FIELDS = ("loader_wait_fraction_per_round", "train_loss_per_round", "val_loss_per_round",
                    "page_faults_per_round", "preemptions_per_round")


class TaskFile:
    """A dataclass one process writes for a child it starts, read back whole there (worker.Task,
    distributed.Launch). ``FORMAT`` refuses a child of another devicebench, named by ``WHAT``."""

    FORMAT: ClassVar[int]
    WHAT: ClassVar[str]  # e.g. "devicebench worker: task"

    def write(self, path: Path) -> Path:
        return write_atomically(path, json.dumps(dataclasses.asdict(self)))

    @classmethod
    def read(cls, path: Path):
        values = json.loads(Path(path).read_text())
        if values.get("format") != cls.FORMAT:
            raise SystemExit(f"{cls.WHAT} format {values.get('format')} is not {cls.FORMAT}: the devicebench that "
                             f"wrote it differs from this one; install the same one in every environment")
        return cls(**values)


class FileError(DevicebenchError):
    """A run file that cannot be used: its message names the file and the reason."""


class NotARunFile(FileError):
    """Readable JSON of something else (a calibration, another suite's results) or of a run with no rows: in a
    folder of runs, nothing to judge."""


# ------------------------------------------------------------------------------------------------ writing
def write_json_atomically(path: Path, data: dict, sort_keys: bool = False) -> Path:
    """``data`` as JSON, written whole or not at all (write_atomically)."""
    return write_atomically(path, json.dumps(data, indent=1, sort_keys=sort_keys))


def write_atomically(path: Path, text: str | bytes) -> Path:
    """Write to a temporary file beside ``path``, flush, fsync and rename: a reader sees the old file or the new
    one, never half of one. A failed write (no space, no permission) removes the temporary file, leaves the old
    file as it was, and raises FileError naming the file and the cause."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(partial, "wb" if isinstance(text, bytes) else "w") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, path)
    except OSError as error:
        try:
            partial.unlink(missing_ok=True)
        except OSError:  # a read-only file system refuses this too; there is nothing there to remove
            pass
        cause = {errno.ENOSPC: "no space left on the device", errno.EACCES: "permission denied",
                 errno.EROFS: "read-only file system", errno.EDQUOT: "disk quota exceeded"}.get(error.errno,
                                                                                                error.strerror)
        raise FileError(f"could not write {path}: {cause}; nothing was written there (any earlier file is as it "
                        f"was). Free space or choose another folder, then run again") from None
    return path


# ------------------------------------------------------------------------------------------------ migration
def migrate(data: dict) -> dict:
    """A run file of any known schema, brought to SCHEMA in place; FileError for a newer or unknown one."""
    schema = schema_of(data)
    if schema > SCHEMA:
        raise FileError(f"written with result schema {schema}, newer than this devicebench understands ({SCHEMA}); "
                        f"upgrade devicebench to read it")
    for version in range(schema + 1, SCHEMA + 1):
        UPDATES[version](data)
    return data


def schema_of(data: dict) -> int:
    about = data.get("devicebench")
    if isinstance(about, dict) and "schema" in about:
        schema = about["schema"]
    else:  # schemas 1 and 2 kept the number in machine_info
        schema = (data.get("machine_info") or {}).get("devicebench_schema")
    if schema is None:
        raise NotARunFile("no devicebench fields (a run of another suite?)")
    if not isinstance(schema, int) or isinstance(schema, bool) or schema < 1:
        raise FileError(f"result schema {schema!r} is not a version")
    return schema


def update_to_2(data: dict) -> None:
    """Schema 1 timed training and validation together: its round is the training time, marked as such."""
    for bench in _benchmarks(data):
        extra = bench.get("extra_info")
        if isinstance(extra, dict) and "train_seconds" not in extra:
            for entry in [extra, *_entries(extra.get("processes"))]:
                if "round_seconds" in entry:
                    entry["train_seconds"] = entry["round_seconds"]
            extra["timed_with_validation"] = True


def update_to_3(data: dict) -> None:
    """Schema 3: the version at the file's top, and each round time once, in its process's entry."""
    machine_info = data.get("machine_info") or {}
    machine_info.pop("devicebench_schema", None)
    data["devicebench"] = {**(data.pop("devicebench_run", None) or {}), "schema": 3}
    for bench in _benchmarks(data):
        extra = bench.get("extra_info")
        if not isinstance(extra, dict):
            continue
        extra.pop("schema_version", None)
        if not extra.get("processes"):  # one process: its rounds were the row's
            extra["processes"] = [{name: extra[name] for name in (*PROCESS_FIELDS, *PER_ROUND_FIELDS)
                                   if name in extra}]
        for name in ("round_seconds", "train_seconds", "val_seconds", "round_sequence", *PER_ROUND_FIELDS):
            extra.pop(name, None)
        if isinstance(bench.get("stats"), dict):
            bench["stats"].pop("data", None)


UPDATES = {2: update_to_2, 3: update_to_3}


def _benchmarks(data: dict) -> list[dict]:
    """The rows a migration can read; others are left for row_problem to refuse by name."""
    rows = data.get("benchmarks")
    return [bench for bench in rows if isinstance(bench, dict)] if isinstance(rows, list) else []


def _entries(processes: object) -> list[dict]:
    return [entry for entry in processes if isinstance(entry, dict)] if isinstance(processes, list) else []


# ------------------------------------------------------------------------------------------------ checking
IDENTITY_FIELDS = ("workload", "workload_version", "pipeline", "scale", "samples_per_round", "device")


def row_problem(extra: object) -> str | None:
    """Why a row's fields cannot be judged (missing identity, times that are not times, counts that are not
    counts), or None: the one check every reader of saved rows goes through."""
    if not isinstance(extra, dict):
        return "no devicebench fields"
    missing = [name for name in IDENTITY_FIELDS if extra.get(name) in (None, "")]
    if missing:
        return f"missing {', '.join(missing)}"
    for name in ("workload", "pipeline", "scale", "device", "device_name", "interleave_id"):
        if name in extra and extra[name] is not None and not isinstance(extra[name], str):
            return f"{name} is {extra[name]!r}, not a name"
    for name in ("workers", "optimizer", "pretrained", "data_source", "dtype", "channels_last", "compiled",
                 "cuda_graphs"):
        if isinstance(extra.get(name), (list, dict)):
            return f"{name} is {extra[name]!r}, not a value"
    if not _whole(extra["workload_version"]) or extra["workload_version"] < 0:
        return f"workload_version is {extra['workload_version']!r}, not a version number"
    if not _whole(extra["samples_per_round"]) or not 1 <= extra["samples_per_round"] <= 10 ** 15:
        return f"samples_per_round is {extra['samples_per_round']!r}, not a whole number from 1 to 10^15"
    processes = extra.get("processes")
    if not isinstance(processes, list) or not processes:
        return "no processes with round times"
    for number, process in enumerate(processes, 1):
        if not isinstance(process, dict):
            return f"process {number} is not an entry of times"
        for name in ("train_seconds", "round_seconds"):
            times = process.get(name)
            if not isinstance(times, list) or not times:
                return f"process {number}: no {name}"
            bad = next((value for value in times if not _positive_time(value)), None)
            if bad is not None or any(not _positive_time(value) for value in times):
                return f"process {number}: {name} holds {bad!r}, not a finite time above zero"
        if "pair" in process and (not _whole(process["pair"]) or process["pair"] < 1):
            return f"process {number}: pair {process['pair']!r} is not a pair number"
    return None


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# A round's time outside these is no measurement of a training epoch (and its ratios would overflow).
SHORTEST_ROUND_S, LONGEST_ROUND_S = 1e-9, 1e7


def _positive_time(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and SHORTEST_ROUND_S <= value <= LONGEST_ROUND_S


# Larger than any file devicebench writes (a run of 100 pairs of every row is a few MiB): read no further.
LARGEST_FILE_BYTES = 256 * 2**20


def read_bytes_checked(path: Path, what: str = "run file") -> bytes:
    """The bytes of a regular file of at most LARGEST_FILE_BYTES; FileError naming the file and the fix otherwise
    (a link to /dev/zero would fill the memory, a pipe would never end)."""
    path = Path(path)
    try:
        found = path.stat()
        if stat.S_ISDIR(found.st_mode):
            raise FileError(f"{path}: is a folder, not a {what}")
        if not stat.S_ISREG(found.st_mode):
            raise FileError(f"{path}: not a regular file (a device, pipe or socket), so not a {what}")
        if found.st_size > LARGEST_FILE_BYTES:
            raise FileError(f"{path}: {found.st_size / 2**20:,.0f} MiB, larger than any {what} devicebench writes "
                            f"({LARGEST_FILE_BYTES / 2**20:.0f} MiB); not a {what}")
        with open(path, "rb") as file:
            return file.read(LARGEST_FILE_BYTES + 1)
    except FileNotFoundError:
        raise FileError(f"{path}: no such file") from None
    except PermissionError:
        raise FileError(f"{path}: permission denied; give this user read access to it (chmod u+r)") from None
    except OSError as error:
        raise FileError(f"{path}: could not be read ({error.strerror or error})") from None


def read(path: Path) -> dict:
    """A run file read, checked for its shape and migrated; FileError naming why it cannot be used."""
    path = Path(path)
    try:
        data = json.loads(read_bytes_checked(path).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise FileError(f"{path}: not readable JSON ({type(error).__name__}: {error}); a truncated or binary "
                        f"file? Re-measure it") from None
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list) \
            or not isinstance(data.get("machine_info"), dict):
        raise NotARunFile(f"{path}: not a pytest-benchmark result file")
    try:
        migrate(data)
    except FileError as error:
        raise type(error)(f"{path}: {error}") from None
    if (problem := _machine_info_problem(data["machine_info"])) is not None:
        raise FileError(f"{path}: machine_info {problem}; not a file devicebench wrote (edited?): re-measure it")
    if not isinstance((data.get("devicebench") or {}).get("interrupted", False), bool):
        raise FileError(f"{path}: its 'interrupted' mark is not true or false; re-measure it")
    if not data["benchmarks"]:
        raise NotARunFile(f"{path}: holds no rows (a run whose every row was skipped or cut off writes none)")
    return data


def _machine_info_problem(info: dict) -> str | None:
    """What in a run's machine_info its readers could not use as the machine's identity, or None."""
    accelerators = info.get("accelerators")
    if accelerators is not None and (not isinstance(accelerators, list)
                                     or not all(isinstance(item, dict) for item in accelerators)):
        return f"accelerators is {accelerators!r}, not a list of devices"
    if accelerators and any(not isinstance(item.get("name", ""), str) for item in accelerators):
        return "an accelerator's name is not a name"
    for name in ("node", "machine_name", "cpu_name", "torch_version"):
        if info.get(name) is not None and not isinstance(info[name], str):
            return f"{name} is {info[name]!r}, not a name"
    return None


# ------------------------------------------------------------------------------------------------ pooled stats
def stats_summary(values: list[float]) -> dict:
    """pytest-benchmark's statistics of the pooled rounds (its ``stats`` without the raw data), so that its own
    ``pytest-benchmark compare`` reads a merged run."""
    ordered = sorted(values)
    count = len(ordered)
    mean = statistics.fmean(ordered)
    stddev = statistics.stdev(ordered) if count > 1 else 0.0
    q1, q3 = (statistics.quantiles(ordered, n=4, method="inclusive")[i] for i in (0, 2)) if count > 1 else \
        (ordered[0], ordered[0])
    iqr = q3 - q1
    low = next(value for value in ordered if value >= q1 - 1.5 * iqr)
    high = next(value for value in reversed(ordered) if value <= q3 + 1.5 * iqr)
    iqr_outliers = sum(1 for value in ordered if value < q1 - 1.5 * iqr or value > q3 + 1.5 * iqr)
    stddev_outliers = sum(1 for value in ordered if value < mean - stddev or value > mean + stddev)
    return {"min": ordered[0], "max": ordered[-1], "mean": mean, "stddev": stddev, "rounds": count,
            "median": statistics.median(ordered), "iqr": iqr, "q1": q1, "q3": q3, "iqr_outliers": iqr_outliers,
            "stddev_outliers": stddev_outliers, "outliers": f"{stddev_outliers};{iqr_outliers}", "ld15iqr": low,
            "hd15iqr": high, "ops": 1 / mean if mean else 0.0, "total": sum(ordered), "iterations": 1}
