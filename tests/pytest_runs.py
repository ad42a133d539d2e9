"""How the tests run the suite's own pytest in a fresh process, as a user would: shared by the test modules."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QUICK_MNIST = [str(REPO / "benchmarks"), "-k", "mnist", "--device", "cpu", "--scale", "quick", "--data",
               "synthetic"]
# tests/tiny_workload.py: a row whose rounds take milliseconds, for tests of what happens around the rows.
QUICK_TINY = [str(REPO / "benchmarks"), "-k", "tiny_linear", "--device", "cpu", "--scale", "quick"]
TINY_WORKLOAD = {"DEVICEBENCH_WORKLOADS": "tests.tiny_workload"}


def run_pytest(*args: str, cwd: Path, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "DEVICEBENCH_DATA_DIR": str(cwd / "data"), **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "pytest", *args, "-p", "no:cacheprovider",
                           "--rootdir", str(REPO), "-c", str(REPO / "pyproject.toml")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
