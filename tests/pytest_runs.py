"""How the tests run the suite's own pytest in a fresh process, as a user would: shared by the test modules."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QUICK_MNIST = [str(REPO / "benchmarks"), "-k", "mnist", "--device", "cpu", "--scale", "quick", "--data",
               "synthetic"]
# tests/tiny_workload.py: a row whose rounds take milliseconds, for tests of what happens around the rows.
QUICK_TINY = [str(REPO / "benchmarks"), "-k", "tiny_linear", "--device", "cpu", "--scale", "quick"]
TINY_WORKLOAD = {"DEVICEBENCH_WORKLOADS": "tests.tiny_workload"}
# One torch.compile cache for every suite process the tests start, pytest-xdist's workers included: each tuned row's
# code is compiled once (20-60 s of C++ on 2 cores) rather than once per process; compiled code is keyed by its
# source and torch version, so a reused entry is the same code. A test that needs other caching says so itself.
TEST_COMPILE_CACHE = Path(tempfile.gettempdir()) / f"devicebench-test-compile-cache-{os.getuid()}"
SHARED_COMPILE_CACHE = {"TORCHINDUCTOR_CACHE_DIR": str(TEST_COMPILE_CACHE / "inductor"),
                        "TRITON_CACHE_DIR": str(TEST_COMPILE_CACHE / "triton")}


def run_pytest(*args: str, cwd: Path, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "DEVICEBENCH_DATA_DIR": str(cwd / "data"), **SHARED_COMPILE_CACHE, **(env_extra or {})}
    caching = [] if any(arg.startswith("--compile-cache") for arg in args) else ["--compile-cache", "shared"]
    return subprocess.run([sys.executable, "-m", "pytest", *args, *caching, "-p", "no:cacheprovider",
                           "--rootdir", str(REPO), "-c", str(REPO / "pyproject.toml")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
