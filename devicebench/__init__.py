"""devicebench: PyTorch training benchmarks across cpu, mps and cuda.

The library is importable without pytest: devices, data, workloads, the one-row measurement, the worker and its
coordinator, run files, comparison, plots and the ``devicebench`` command live here; the pytest-benchmark cases in
``benchmarks/`` are a thin front over the same measurement (docs/internals.md has the map).
"""

__version__ = "0.1.0"
