"""The workloads, by name. Adding one: write a module with NAME, VERSION, PIPELINES and build(), list it here."""

from __future__ import annotations

from types import ModuleType

from devicebench.errors import UsageError
from devicebench.workloads import mnist_mlp, resnet18_cifar

WORKLOADS: dict[str, ModuleType] = {module.NAME: module for module in (mnist_mlp, resnet18_cifar)}


def get_workload(name: str) -> ModuleType:
    try:
        return WORKLOADS[name]
    except KeyError:
        raise UsageError(f"unknown workload {name!r}; known: {', '.join(WORKLOADS)}") from None
