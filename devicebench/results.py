"""Saved runs as the comparisons read them: a ``Run`` of ``Row``s, from run files (runfile.py).

Every file goes through one check: a file that is not a readable devicebench run (malformed, truncated, another
suite's, a newer schema) and a row whose times are not times or whose identity is incomplete are skipped with a
warning naming the file, the row and the reason; a regression gate (``strict``) refuses them instead.
"""

from __future__ import annotations

import functools
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from devicebench import runfile, schema
from devicebench.errors import UsageError
from devicebench.runfile import write_json_atomically  # noqa: F401 - the one writer, re-exported for callers


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
        return not self.extra.get("timed_with_validation")

    @functools.cached_property
    def processes(self) -> list[list[float]]:
        """Per process, its training epochs' times: what throughput is computed from."""
        return [[float(s) for s in process["train_seconds"]] for process in self.extra["processes"]]

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
        return (self.machine_name, self.machine_info.get("cpu_name", "?"), accelerators)

    @property
    def machine_name(self) -> str:
        """DEVICEBENCH_MACHINE where the run set it (environment.machine_name), else its hostname."""
        return self.machine_info.get("machine_name") or self.machine_info.get("node", "?")

    @property
    def machine_label(self) -> str:
        names = [a.get("name", "?") for a in self.machine_info.get("accelerators") or []]
        return f"{self.machine_name} ({', '.join([self.machine_info.get('cpu_name', '?'), *names])})"


def warn(message: str) -> None:
    print(f"devicebench: warning: {message}", file=sys.stderr)


def load_run(path: Path, quiet: bool = False, strict: bool = False, in_folder: bool = False) -> Run | None:
    """Read one saved run; None (with a warning naming the file and why, unless ``quiet``) when it is not a
    readable devicebench run. ``strict``: raise UsageError instead, for a bad file or any bad row in it; but a file
    found ``in_folder`` that is JSON of something else (a calibration beside the runs) is skipped, not a run."""
    try:
        data = runfile.read(Path(path))
    except runfile.FileError as error:
        if strict and not (in_folder and isinstance(error, runfile.NotARunFile)):
            raise UsageError(f"{error}. A regression gate judges every run it is given, so it fails: re-measure or "
                             f"remove it") from None
        if not quiet:
            warn(f"skipping {error}")
        return None
    run = run_of(data, Path(path), quiet=quiet, strict=strict)
    if not run.rows:
        if not quiet:
            warn(f"skipping {path}: none of its rows can be judged (the warnings above say why)")
        return None
    return run


def run_of(data: dict, path: Path, quiet: bool = True, strict: bool = False) -> Run:
    """A run already in memory (migrated), its bad rows left out with a warning (``strict``: refused)."""
    rows = []
    for bench in data["benchmarks"]:
        name = str(bench.get("name", "?")) if isinstance(bench, dict) else "?"
        extra = bench.get("extra_info") if isinstance(bench, dict) else None
        problem = runfile.row_problem(extra)
        if problem is None:
            row = Row(test=name, extra=extra)
            try:  # every derived field compare and history read, read once here
                row.identity, row.workload_version, row.samples_per_s  # noqa: B018
            except (KeyError, TypeError, ValueError, statistics.StatisticsError, ZeroDivisionError) as error:
                problem = f"unreadable fields ({type(error).__name__}: {error})"
        if problem is not None:
            if strict:
                raise UsageError(f"{path}: row {name!r} cannot be judged: {problem}. A regression gate judges "
                                 f"every row it is given, so it fails: re-measure or remove the run")
            if not quiet:
                warn(f"{path}: skipping row {name!r}: {problem}")
            continue
        rows.append(row)
    about = data.get("devicebench") or {}
    return Run(Path(path), data.get("machine_info") or {}, str(data.get("datetime", "")), rows,
               interrupted=bool(about.get("interrupted")), environment=about.get("environment"),
               sweep_position=about.get("sweep_position"))


def rows_of(data: dict) -> list[Row]:
    """The readable rows of a run already in memory (a run file's dict, migrated)."""
    return run_of(data, Path("<memory>")).rows


def expand(specs: list[str], results_dir: Path = Path("results")) -> list[Path]:
    """Turn command-line RUN arguments into files: a JSON file, a folder (every run in it), or a run id
    such as ``0003`` (pytest-benchmark's numbering) looked up under ``results_dir``."""
    paths: list[Path] = []
    for spec in specs:
        candidate = Path(spec)
        if candidate.is_dir() and candidate.suffix != ".json":
            # Every run in it, not a run's staging folder (.NAME.processes) in the making.
            found = sorted(path for path in candidate.rglob("*.json")
                           if not any(part.startswith(".") for part in path.relative_to(candidate).parts))
            if not found:
                raise UsageError(f"{spec}: a folder with no .json run files in it")
            paths.extend(found)
        elif candidate.exists():  # a file, or something else where a file was expected: reading it says which
            paths.append(candidate)
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
    named = {Path(spec) for spec in specs}
    for path in expand(specs, results_dir):
        run = load_run(path, strict=strict, in_folder=path not in named)
        if run is not None:
            runs.append(run)
    if not runs:
        raise UsageError(f"no readable devicebench runs in {', '.join(specs)}")
    return runs
