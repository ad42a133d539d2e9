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

os.environ.pop("PYTHONDONTWRITEBYTECODE", None)  # for the processes the tests start
sys.dont_write_bytecode = False  # for this one: what it imports from here on

import torch  # noqa: E402  (after the bytecode setting, so that torch's modules are written too)

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"  # read by the processes the tests start
    os.environ["MKL_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
        os.environ.pop(name, None)


# The files that start suite processes, longest first (seconds of a fresh clone's test command on the 2-core VM,
# 2026-12-02): the test command hands whole files to its two workers in collection order (pytest_configure below;
# xdist's default orders them by their number of tests, which put these few long tests last and left one worker
# idle at the end).
LONGEST_FIRST = ("test_benchmarks_quick.py",  # 245 s: the quick run of every row, compiled rows included
                 "test_benchmark_run.py",  # 230 s: saved runs and the gate, three interrupts
                 "test_sweep.py",  # 220 s: twelve worker processes
                 "test_workloads.py",  # 115 s: the third workload's two compiled processes
                 "test_counts.py")  # 84 s: three processes


def pytest_collection_modifyitems(items):
    def rank(item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the rest keep their order


def pytest_configure(config):
    # xdist's --no-loadscope-reorder, set here rather than in pyproject's addopts: those also reach `pytest
    # benchmarks` on machines without pytest-xdist (the GPU machine), which would refuse the unknown option.
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False
