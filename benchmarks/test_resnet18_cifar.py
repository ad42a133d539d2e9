"""resnet18_cifar (seed 004) on every selected device and pipeline: test_resnet18_cifar[<device>-<pipeline>]."""

from devicebench.workloads import resnet18_cifar

PIPELINES = resnet18_cifar.PIPELINES


def test_resnet18_cifar(run_workload, device, pipeline):
    run_workload(resnet18_cifar, device, pipeline)
