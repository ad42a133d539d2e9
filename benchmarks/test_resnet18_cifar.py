"""resnet18_cifar (the 004 post) on every selected device and pipeline: test_resnet18_cifar[<device>-<pipeline>].

A torch without a matching torchvision and timm skips these rows, saying why (rows.missing_requirement)."""

from devicebench.workloads import resnet18_cifar

WORKLOAD = resnet18_cifar  # the plugin parametrizes `pipeline` with the pipelines it offers


def test_resnet18_cifar(run_workload, device, pipeline):
    run_workload(WORKLOAD, device, pipeline)
