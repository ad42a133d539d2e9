"""The workloads, by name, each checked against the workload contract (base.WorkloadModule) when registered.

A workload is one module. The built-in ones are listed here; any other is registered without touching this file
by naming its module in ``DEVICEBENCH_WORKLOADS`` (comma-separated, e.g. ``DEVICEBENCH_WORKLOADS=mypkg.tiny``),
and runs as ``benchmarks/test_registered_workloads.py::test_workload[<name>-<pipeline>-<device>]``.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

from devicebench import scales
from devicebench.errors import UsageError
from devicebench.workloads import char_gpt, mnist_mlp, resnet18_cifar
from devicebench.workloads.base import check_workload

# By name: the order pytest runs their files (benchmarks/test_<name>.py) in, which devicebench run's rows follow.
BUILT_IN: dict[str, ModuleType] = {module.NAME: check_workload(module) for module in
                                  sorted((char_gpt, mnist_mlp, resnet18_cifar), key=lambda module: module.NAME)}


def registered_workloads() -> dict[str, ModuleType]:
    """Workloads named in ``DEVICEBENCH_WORKLOADS``, imported and checked."""
    found = {}
    for dotted in filter(None, (part.strip() for part in os.environ.get("DEVICEBENCH_WORKLOADS", "").split(","))):
        try:
            module = importlib.import_module(dotted)
        except ImportError as error:
            raise UsageError(f"DEVICEBENCH_WORKLOADS names {dotted!r}, which does not import: {error}") from None
        found[check_workload(module).NAME] = module
    return found


def all_workloads() -> dict[str, ModuleType]:
    return {**BUILT_IN, **registered_workloads()}


def get_workload(name: str) -> ModuleType:
    workloads = all_workloads()
    try:
        return workloads[name]
    except KeyError:
        raise UsageError(f"unknown workload {name!r}; known: {', '.join(workloads)}") from None


scales.find_workload = get_workload  # for scale_for: a registered workload's module carries its scales
