"""``devicebench sweep``: the suite on several torch releases, one command ("did the new torch make it slower?").

For each torch version it builds (or reuses) a virtual environment with that torch, the torchvision made with it
(``torch_versions.toml``) and devicebench's requirements, with venv + pip: no resolver of our own. Then it
measures the rows in every environment as several fresh workers, alternating the versions (coordinator.py), and
saves one run per version where ``compare`` and ``history`` find them. ``history`` then marks the version at which
a row stepped.

A long job, so: progress per version and process; environments are marked complete only after their install
succeeded (a half-built one is rebuilt, never trusted); a version whose run is already saved is reused unless
``--rerun``; an interrupted run resumes from its finished processes; a version that cannot be installed on this
platform or Python is skipped with pip's reason; too little disk or no reachable package index stops with a clear
message before anything is half-done.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import venv
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from devicebench import coordinator, machine_lock
from devicebench.calibration import Calibration
from devicebench.until import UntilTarget
from devicebench.errors import DevicebenchError, UsageError
from devicebench.tables import load_table

COMPLETE_MARKER = ".devicebench-env-complete"
# A CUDA build of torch with its libraries takes about 5.5 GB in a virtual environment (measured here: torch
# 2.14.1 + torchvision 0.29.1, 5,557 MB); ask for a little more before starting one.
FREE_BYTES_NEEDED = 7 * 2**30


@dataclass(frozen=True)
class Skipped:
    version: str
    reason: str


def torchvision_for(torch_version: str) -> str | None:
    return load_table("torch_versions")["torchvision"].get(torch_version)


def environment_path(envs_dir: Path, torch_version: str) -> Path:
    return Path(envs_dir) / f"torch-{torch_version}"


def python_of(env_path: Path) -> Path:
    return env_path / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")


def ensure_environment(envs_dir: Path, torch_version: str, pip_args: list[str],
                       echo: Callable[[str], None] = print) -> coordinator.Environment:
    """The environment for ``torch_version``, built if missing or incomplete. Raises ``Skip`` when pip cannot
    install that version here, ``DevicebenchError`` when the machine cannot build any (disk, index)."""
    label = f"torch-{torch_version}"
    path = environment_path(envs_dir, torch_version)
    if (path / COMPLETE_MARKER).exists():
        echo(f"{label}: reusing {path}")
        return coordinator.Environment(label, str(python_of(path)))
    torchvision = torchvision_for(torch_version)
    if torchvision is None:
        known = ", ".join(load_table("torch_versions")["torchvision"])
        raise Skip(f"no torchvision release is known to pair with torch {torch_version} "
                   f"(devicebench/torch_versions.toml knows {known}); add the pair there")
    Path(envs_dir).mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(envs_dir).free
    if free < FREE_BYTES_NEEDED:
        raise DevicebenchError(f"only {free / 2**30:.1f} GiB free under {envs_dir}; an environment with torch "
                               f"needs about {FREE_BYTES_NEEDED / 2**30:.0f} GiB. Free space or pass another "
                               f"--envs-dir")
    if path.exists():
        echo(f"{label}: {path} is incomplete (an earlier build stopped); rebuilding it")
        shutil.rmtree(path)
    echo(f"{label}: building {path} (torch {torch_version}, torchvision {torchvision}, devicebench's requirements)")
    venv.create(path, with_pip=True)
    # Not devicebench itself: its workers run this devicebench's code (worker.command), so every version in the
    # sweep is timed by the same benchmark code.
    command = [str(python_of(path)), "-m", "pip", "install", "--disable-pip-version-check", "-q",
               f"torch=={torch_version}", f"torchvision=={torchvision}", *requirements(), *pip_args]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip()
        shutil.rmtree(path, ignore_errors=True)  # never leave a half-installed environment behind
        if _index_unreachable(output):
            raise DevicebenchError(f"{label}: the package index could not be reached; connect to it (or pass "
                                   f"--pip-args pointing at a local index) and run the sweep again. pip said:\n"
                                   f"{_tail(output)}")
        raise Skip(f"pip could not install torch {torch_version} with torchvision {torchvision} here:\n"
                   f"{_tail(output)}")
    from devicebench import worker

    probe = worker.probe(str(python_of(path)))
    if probe.missing:
        shutil.rmtree(path, ignore_errors=True)
        raise Skip(f"pip installed torch {torch_version} with torchvision {torchvision}, but the environment cannot "
                   f"run devicebench's workers: {'; '.join(probe.missing)}")
    if probe.rows_skip:  # a torchvision built for another torch fails at import: "operator torchvision::nms ..."
        echo(f"{label}: the rows of workloads that need {'; '.join(probe.rows_skip)} will skip here")
    (path / COMPLETE_MARKER).write_text(json.dumps({"torch": torch_version, "torchvision": torchvision}))
    return coordinator.Environment(label, str(python_of(path)))


def requirements() -> list[str]:
    """devicebench's own requirements but torch and torchvision, which the sweep pins per version."""
    from importlib import metadata

    from packaging.requirements import Requirement

    found = []
    for text in metadata.requires("devicebench") or []:
        requirement = Requirement(text)
        if requirement.name not in ("torch", "torchvision") and (requirement.marker is None
                                                                 or requirement.marker.evaluate()):
            found.append(f"{requirement.name}{requirement.specifier}")
    return found


class Skip(Exception):
    """This version cannot be installed here; the message says why."""


def _index_unreachable(pip_output: str) -> bool:
    markers = ("Failed to establish a new connection", "Temporary failure in name resolution",
               "Network is unreachable", "Max retries exceeded", "ConnectTimeoutError")
    return any(marker in pip_output for marker in markers)


def _tail(text: str, lines: int = 6) -> str:
    return "\n".join("    " + line for line in text.splitlines()[-lines:])


def run_sweep(versions: list[str], processes_per_version: int, plan: coordinator.Plan, output_dir: Path,
              envs_dir: Path, name: str, rerun: bool = False, pip_args: list[str] | None = None,
              environments: list[coordinator.Environment] | None = None,
              echo: Callable[[str], None] = print, until: "float | UntilTarget | None" = None,
              budget_seconds: float | None = None, calibration: Calibration | None = None,
              round_seconds: float | None = None, pin_rounds: bool = True) -> tuple[list[Path], list[Skipped]]:
    """Measure every version (or the given ``environments``, which need no build); return runs and skips."""
    if not versions and not environments:
        raise UsageError("give the torch versions to sweep, e.g. --torch 2.11.0 2.12.1 2.13.0 2.14.1")
    machine_lock.hold(f"devicebench sweep --name {name}")  # before pip, which would disturb another's timings
    skipped: list[Skipped] = []
    ready = list(environments or [])
    for version in versions:
        try:
            ready.append(ensure_environment(envs_dir, version, pip_args or [], echo))
        except Skip as reason:
            skipped.append(Skipped(version, str(reason)))
            echo(f"torch-{version}: skipped: {reason}")
    positions = {env.label: index for index, env in enumerate(ready)}  # the sweep's order, for history
    todo = []
    for env in ready:
        saved = Path(output_dir) / f"{name}-{env.label}.json"
        if saved.exists() and not rerun:
            echo(f"{env.label}: already measured ({saved}); kept (--rerun measures it again)")
        else:
            todo.append(env)
    if todo:
        coordinator.run(todo, processes_per_version, plan, output_dir, name, echo, sweep_positions=positions,
                        until_target=until if len(todo) > 1 else None, budget_seconds=budget_seconds,
                        round_seconds=round_seconds, calibration=calibration, pin_rounds=pin_rounds)
    return [Path(output_dir) / f"{name}-{env.label}.json" for env in ready], skipped
