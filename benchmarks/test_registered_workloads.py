"""Workloads registered through ``DEVICEBENCH_WORKLOADS`` (devicebench/workloads/__init__.py): a workload that is
one module outside this repository runs here as test_workload[<name>-<pipeline>-<device>]."""

import pytest

from devicebench.workloads import registered_workloads
from devicebench.workloads.base import pipelines


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    chosen = metafunc.config.devicebench_options.pipelines
    cases = [(workload, pipeline) for workload in registered_workloads().values()
             for pipeline in pipelines(workload) if pipeline in chosen]
    if cases:
        metafunc.parametrize("workload, pipeline", cases, ids=[f"{w.NAME}-{p}" for w, p in cases])
    else:
        none = pytest.mark.skip(reason="no workload registered through DEVICEBENCH_WORKLOADS (the built-in ones "
                                       "run from their own files)")
        metafunc.parametrize("workload, pipeline", [pytest.param(None, None, id="none", marks=none)])


def test_workload(run_workload, device, workload, pipeline):
    run_workload(workload, device, pipeline)
