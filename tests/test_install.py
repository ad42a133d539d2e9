"""devicebench as a user gets it: a wheel built from the checkout, installed into a fresh environment with no
network, used from a folder outside the checkout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from devicebench.workloads import BUILT_IN

REPO = Path(__file__).resolve().parents[1]


def built_wheel(tmp_path: Path) -> Path:
    """The wheel, built offline from a copy of what the package is made of (no build folder in the checkout)."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source)
    shutil.copytree(REPO / "devicebench", source / "devicebench", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "wheels"
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                             "--no-index", "-q", "-w", str(out), str(source)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    wheel, = out.glob("devicebench-*.whl")
    return wheel


def fresh_environment(tmp_path: Path, wheel: Path) -> Path:
    """A new virtual environment holding the wheel; the dependencies (torch, ...) come from this environment's
    site-packages as a path of the new one, not the checkout (an editable install's finder is not carried)."""
    env = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True, timeout=120)
    python = env / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    (Path(purelib) / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    result = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                             "--no-index", "-q", str(wheel)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return env


@pytest.mark.slow
def test_a_wheel_in_a_fresh_environment_runs_compares_and_reports_from_outside_the_checkout(tmp_path):
    env = fresh_environment(tmp_path, built_wheel(tmp_path))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    variables = {**os.environ, "DEVICEBENCH_DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": ""}
    variables.pop("DEVICEBENCH_WORKLOADS", None)

    def devicebench(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(env / "bin" / "devicebench"), *args], cwd=elsewhere, env=variables,
                              capture_output=True, text=True, timeout=900)

    where = subprocess.run([str(env / "bin" / "python"), "-c", "import devicebench; print(devicebench.__file__)"],
                           cwd=elsewhere, env=variables, capture_output=True, text=True)
    assert where.stdout.startswith(str(env)), where.stdout + where.stderr  # the wheel's copy, not the checkout
    result = devicebench("run", "--processes", "1", "--name", "quick", "--output-dir", "out", "--",
                         "--device", "cpu", "--scale", "quick", "--data", "synthetic", "--pretrained", "no")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_file = elsewhere / "out" / "quick-current.json"
    names = [bench["name"] for bench in json.loads(run_file.read_text())["benchmarks"]]
    assert {f"test_{workload}[cpu-{pipeline}]" for workload in BUILT_IN
            for pipeline in ("seed", "resident", "tuned")} == set(names)
    compared = devicebench("compare", str(run_file))
    assert compared.returncode == 0 and "mnist_mlp · resident · quick" in compared.stdout, compared.stderr
    reported = devicebench("report", str(run_file), "-o", "report.html")
    assert reported.returncode == 0 and (elsewhere / "report.html").stat().st_size > 100_000, reported.stderr
