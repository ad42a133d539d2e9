"""The project's tests run two at a time (README's test command: ``-n 2 --dist loadfile``) on a 2-core machine.

Under pytest-xdist each worker, and every process it starts (the suite's own pytest runs, devicebench workers),
uses one thread for torch: two workers of two threads each would oversubscribe the two cores, and torch's
threads spin while they wait. And the processes a test starts must not look like xdist workers themselves:
pytest-benchmark reads ``PYTEST_XDIST_WORKER`` and would turn their benchmark rows into untimed tests.

Bytecode is written. The test command installs with ``pip --no-compile`` (compiling all of torch's sources at
install costs more than the tests import), and where the environment sets ``PYTHONDONTWRITEBYTECODE`` (this
project's VMs and CI do) no process ever keeps what it compiled: each of the ~40 suite processes the tests start
then compiled torch's Python anew, 7-9 s an import on the 2-core VM against ~2 s from bytecode. So the first
process to import a module writes its bytecode into the project's own environment, and the rest read it.
"""

import os
import sys
import tempfile

os.environ.pop("PYTHONDONTWRITEBYTECODE", None)  # for the processes the tests start
sys.dont_write_bytecode = False  # for this one: what it imports from here on
# The tests start many small measurements at once and judge none of their timings: one at a time on the machine
# (devicebench/machine_lock.py) is for users' runs, whose lock file the tests leave alone (test_machine_lock.py
# checks it with files of its own).
os.environ["DEVICEBENCH_ALLOW_CONCURRENT"] = "1"
os.environ["DEVICEBENCH_LOCK"] = os.path.join(tempfile.gettempdir(), "devicebench-tests-measuring.lock")

import pytest  # noqa: E402
import torch  # noqa: E402  (after the bytecode setting, so that torch's modules are written too)

# The local HTTP server the download tests use (fixtures imported here are these tests' own, not the suite's).
from tests.doubles.http_server import closed_port_url, http_server  # noqa: E402,F401

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"  # read by the processes the tests start
    os.environ["MKL_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
        os.environ.pop(name, None)


# The files that start suite processes, longest first (seconds of a fresh clone's test command with --slow on the
# 2-core VM, 2026-12-02): the test command hands whole files to its two workers in collection order
# (pytest_configure below; xdist's default orders them by their number of tests, which put these few long tests
# last and left one worker idle at the end).
LONGEST_FIRST = ("test_benchmarks_quick.py",  # 280 s (slow): the quick run of every row, compiled rows included
                 "test_benchmark_run.py",  # 150 s, 60 of them slow: saved runs and the gate, three interrupts
                 "test_sweep.py",  # 155 s, 120 of them slow: twelve worker processes
                 "test_workloads.py",  # 75 s, 52 of them slow: the third workload's two compiled processes
                 "test_scaling_launch.py",  # 70 s (slow): five torchrun launches of one and two gloo ranks
                 "test_counts.py")  # 40 s (slow): three processes


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true",
                     help="also run the tests marked slow: whole benchmark runs in fresh processes (the quick "
                          "scale of every row, compiled rows included; sweeps of worker processes), about 4 more "
                          "minutes on 2 cores. CI runs them (.ci/run)")


# Why a slow tier. The test command runs in under 5 minutes on a 2-core VM, install included; the handful of
# end-to-end tests that start whole benchmark runs (each process imports torch and its compiler, ~7 s of CPU, and
# the quick run compiles two tuned rows, ~70 s of C++) take 9 of the 12 CPU-minutes the whole suite needs. They
# check what only a real run can (a compiled row trains, a slowed environment is a step in a sweep, counts agree
# between processes), so CI runs them every time; the test command says how many it left out and how to run them.
def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the rest keep their order
    if not config.getoption("--slow"):
        skip = pytest.mark.skip(reason="slow: a whole benchmark run in fresh processes; run with --slow (CI does)")
        for item in items:
            if item.get_closest_marker("slow"):
                item.add_marker(skip)


def pytest_configure(config):
    # xdist's --no-loadscope-reorder, set here rather than in pyproject's addopts: those also reach `pytest
    # benchmarks` on machines without pytest-xdist (the GPU machine), which would refuse the unknown option.
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False
