"""The project's tests run two at a time (README's test command: ``-n 2 --dist loadfile``) on a 2-core machine.

Under pytest-xdist each worker, and every process it starts (the suite's own pytest runs, devicebench workers),
uses one thread for torch: two workers of two threads each would oversubscribe the two cores, and torch's
threads spin while they wait. And the processes a test starts must not look like xdist workers themselves:
pytest-benchmark reads ``PYTEST_XDIST_WORKER`` and would turn their benchmark rows into untimed tests.
"""

import os

import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"  # read by the processes the tests start
    os.environ["MKL_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
        os.environ.pop(name, None)
