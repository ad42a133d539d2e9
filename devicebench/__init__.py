"""devicebench: PyTorch training benchmarks across cpu, mps and cuda.

The library is importable without pytest: devices, data, workloads, results, comparison, plots and the
``devicebench`` command live here; the pytest-benchmark cases in ``benchmarks/`` only pick a workload, a device
and a pipeline and time rounds.
"""

__version__ = "0.1.0"

# Version of the fields devicebench writes into each result row (``extra_info``) and into ``machine_info``.
# Bump it when a field changes meaning; readers refuse versions they do not know (schema.py has the history).
RESULT_SCHEMA_VERSION = 2
