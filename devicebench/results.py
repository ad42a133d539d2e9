"""Reading saved runs: pytest-benchmark JSON files written with devicebench's machine_info and extra_info.

Robust on purpose: a malformed file, a JSON file that is not a pytest-benchmark run, or a run without
devicebench's fields is skipped with a warning naming it; a run written by a newer schema is refused by name.
"""

from __future__ import annotations

import functools
import json
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from devicebench import RESULT_SCHEMA_VERSION, schema
from devicebench.errors import UsageError


@dataclass(frozen=True)
class RowIdentity:
    """What makes two rows the same experiment (schema.py lists the fields and says why)."""

    work: tuple  # values of schema.WORK_FIELDS
    options: tuple  # (name, value) of the schema.OPTION_FIELDS the row has
    device: str
    device_name: str

    @property
    def workload(self) -> str:
        return self.work[0]

    @property
    def pipeline(self) -> str:
        return self.work[2]

    @property
    def scale(self) -> str:
        return self.work[3]

    def fields(self) -> dict:
        """The identity as field name -> value (schema.WORK_FIELDS, OPTION_FIELDS, DEVICE_FIELDS)."""
        return {**dict(zip(schema.WORK_FIELDS, self.work)), **dict(self.options), "device": self.device,
                "device_name": self.device_name}

    def without_device(self) -> tuple:
        """The configuration alone: the key of the devices view (one device against another)."""
        return self.work, self.options

    def config_label(self) -> str:
        """workload · pipeline · scale, then the options that are not the post's defaults."""
        shown = [f"{name}={value}" for name, value in self.options
                 if (name, value) not in (("workers", 0), ("optimizer", "ranger21"))]
        return " · ".join([self.workload, self.pipeline, f"scale {self.scale}", *shown])


@dataclass(frozen=True)
class Row:
    """One benchmark row of one run: a workload on a device and pipeline, at a scale.

    ``processes`` holds each process's timed rounds: one entry for a plain pytest run, N for
    ``devicebench run --processes N``.
    """

    test: str
    extra: dict = field(compare=False, hash=False)

    # identity and processes are read for every comparison a row takes part in: computed once per row.
    @functools.cached_property
    def identity(self) -> RowIdentity:
        extra = self.extra
        options = [(name, extra[name]) for name in schema.OPTION_FIELDS if name in extra]
        if extra.get("round_core") is not None:  # rounds pinned to a core ran another way (schema.PINNED_ROUNDS)
            options.append((schema.PINNED_ROUNDS, True))
        return RowIdentity(work=tuple(extra.get(name) for name in schema.WORK_FIELDS), options=tuple(options),
                           device=extra["device"], device_name=str(extra.get("device_name") or extra["device"]))

    @property
    def workload(self) -> str:
        return self.extra["workload"]

    @property
    def workload_version(self) -> int:
        return int(self.extra["workload_version"])

    @property
    def pipeline(self) -> str:
        return self.extra["pipeline"]

    @property
    def device(self) -> str:
        return self.extra["device"]

    @property
    def device_name(self) -> str:
        return self.identity.device_name

    @property
    def measures_training_alone(self) -> bool:
        """Schema 1 rows timed training and validation together; their throughput is per round."""
        return "train_seconds" in self.extra

    @functools.cached_property
    def processes(self) -> list[list[float]]:
        """Per process, the times throughput is computed from: training epochs (schema 2) or whole rounds (1)."""
        key = "train_seconds" if self.measures_training_alone else "round_seconds"
        per_process = self.extra.get("processes") or [self.extra]
        return [[float(s) for s in process[key]] for process in per_process]

    @functools.cached_property
    def pairs(self) -> dict[tuple[str, int], list[float]]:
        """Interleaved runs: (interleave_id, worker pair) -> that process's times; {} for other runs."""
        interleave_id = self.extra.get("interleave_id")
        per_process = self.extra.get("processes") or []
        if interleave_id is None or any("pair" not in process for process in per_process):
            return {}
        return {(interleave_id, int(process["pair"])): times for process, times in zip(per_process, self.processes)}

    @property
    def all_seconds(self) -> list[float]:
        return [s for process in self.processes for s in process]

    @property
    def process_medians(self) -> list[float]:
        return [statistics.median(process) for process in self.processes]

    @property
    def median_seconds(self) -> float:
        """The median process's median: one process is one sample (the rounds inside it move together)."""
        return statistics.median(self.process_medians)

    @property
    def samples_per_s(self) -> float:
        return int(self.extra["samples_per_round"]) / self.median_seconds


@dataclass
class Run:
    path: Path
    machine_info: dict
    datetime: str
    rows: list[Row]
    interrupted: bool = False  # stopped early (Ctrl-C): it holds the rows that finished
    environment: str | None = None  # devicebench run/sweep: the environment's label (e.g. torch-2.13.0)
    sweep_position: int | None = None  # devicebench sweep: its place in the sweep's order

    @property
    def version_label(self) -> str:
        """What ``history`` calls this run's step: the torch version, and the environment where a sweep set one."""
        release = self.torch_version.split("+")[0]  # 2.14.1+cu130 was built as environment torch-2.14.1
        if self.sweep_position is None or self.environment in (None, f"torch-{release}"):
            return self.torch_version
        return f"{self.torch_version} [{self.environment}]"

    @property
    def torch_version(self) -> str:
        return str(self.machine_info.get("torch_version", "?"))

    @property
    def machine_key(self) -> tuple:
        """Identity of the machine: runs of different machines are never merged (pyperf's rule)."""
        accelerators = tuple(a.get("name", "?") for a in self.machine_info.get("accelerators") or [])
        return (self.machine_info.get("node", "?"), self.machine_info.get("cpu_name", "?"), accelerators)

    @property
    def machine_label(self) -> str:
        names = [a.get("name", "?") for a in self.machine_info.get("accelerators") or []]
        return f"{self.machine_info.get('node', '?')} ({', '.join([self.machine_info.get('cpu_name', '?'), *names])})"


def write_json_atomically(path: Path, data: dict, sort_keys: bool = False) -> Path:
    """Written to a temporary file beside ``path`` and renamed: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    partial.write_text(json.dumps(data, indent=1, sort_keys=sort_keys))
    partial.replace(path)
    return path


def warn(message: str) -> None:
    print(f"devicebench: warning: {message}", file=sys.stderr)


def load_run(path: Path, quiet: bool = False) -> Run | None:
    """Read one saved run; None (with a warning naming the file, unless ``quiet``) when it is not a readable
    devicebench run."""
    if quiet:
        import contextlib
        import io

        with contextlib.redirect_stderr(io.StringIO()):
            return load_run(path)
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        warn(f"skipping {path}: not readable JSON ({error})")
        return None
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list) \
            or not isinstance(data.get("machine_info"), dict):
        warn(f"skipping {path}: not a pytest-benchmark result file")
        return None
    schema = data["machine_info"].get("devicebench_schema")
    if schema is None:
        warn(f"skipping {path}: no devicebench fields (a run of another suite?)")
        return None
    if not isinstance(schema, int) or schema > RESULT_SCHEMA_VERSION:
        warn(f"skipping {path}: written with result schema {schema}, newer than this devicebench understands "
             f"({RESULT_SCHEMA_VERSION}); upgrade devicebench to read it")
        return None
    rows = []
    for bench in data["benchmarks"]:
        row = _row(bench)
        if row is None:
            warn(f"{path}: skipping row {bench.get('name', '?')!r}: missing devicebench fields or round times")
        else:
            rows.append(row)
    about = data.get("devicebench_run") or {}
    return Run(Path(path), data["machine_info"], str(data.get("datetime", "")), rows,
               interrupted=bool(about.get("interrupted")), environment=about.get("environment"),
               sweep_position=about.get("sweep_position"))


def rows_of(data: dict) -> list[Row]:
    """The readable rows of a run already in memory (a pytest-benchmark-shaped dict)."""
    return [row for row in map(_row, data.get("benchmarks", [])) if row is not None]


def _row(bench: dict) -> Row | None:
    extra = bench.get("extra_info") if isinstance(bench, dict) else None
    if not isinstance(extra, dict):
        return None
    row = Row(test=str(bench.get("name", "?")), extra=extra)
    try:  # every field compare and history will read, read once here so that a bad row is skipped by name
        row.identity, row.workload_version, row.samples_per_s  # noqa: B018
    except (KeyError, TypeError, ValueError, statistics.StatisticsError, ZeroDivisionError):
        return None
    return row


def expand(specs: list[str], results_dir: Path = Path("results")) -> list[Path]:
    """Turn command-line RUN arguments into files: a JSON file, a folder (every run in it), or a run id
    such as ``0003`` (pytest-benchmark's numbering) looked up under ``results_dir``."""
    paths: list[Path] = []
    for spec in specs:
        candidate = Path(spec)
        if candidate.is_file():
            paths.append(candidate)
        elif candidate.is_dir():
            paths.extend(sorted(candidate.rglob("*.json")))
        else:
            # A run id is a plain name; a path that does not exist (absolute, or with folders) is no run id.
            is_run_id = not candidate.is_absolute() and len(candidate.parts) == 1
            matches = sorted(results_dir.rglob(f"{spec}*.json")) if is_run_id and results_dir.is_dir() else []
            if not matches:
                raise UsageError(f"{spec!r}: no such file or folder, and no saved run {spec}* under {results_dir}/")
            paths.extend(matches)
    return paths


def load_runs(specs: list[str], results_dir: Path = Path("results"), strict: bool = False) -> list[Run]:
    """Every readable run the specs name; ``strict`` (a regression gate): any unreadable file is an error."""
    runs = []
    for path in expand(specs, results_dir):
        run = load_run(path)
        if run is None and strict:
            raise UsageError(f"{path} could not be read as a devicebench run (the warning above says why); a "
                             f"regression gate judges every run it is given, so it fails. Re-measure or remove it")
        if run is not None:
            runs.append(run)
    if not runs:
        raise UsageError(f"no readable devicebench runs in {', '.join(specs)}")
    return runs
