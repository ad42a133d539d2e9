"""resnet18_cifar (seed 004) on every selected device and pipeline: test_resnet18_cifar[<device>-<pipeline>]."""

import pytest

from devicebench.workloads import resnet18_cifar

PIPELINES = resnet18_cifar.PIPELINES

# An older torch may have no matching torchvision (and so no timm): mnist_mlp still runs, this one says why not.
pytest.importorskip("torchvision", reason="resnet18_cifar needs torchvision (and timm) matching this torch")
pytest.importorskip("timm", reason="resnet18_cifar needs timm")


def test_resnet18_cifar(run_workload, device, pipeline):
    run_workload(resnet18_cifar, device, pipeline)
