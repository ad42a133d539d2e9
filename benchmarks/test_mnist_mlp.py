"""mnist_mlp (seed 000) on every selected device and pipeline: test_mnist_mlp[<device>-<pipeline>]."""

from devicebench.workloads import mnist_mlp

PIPELINES = mnist_mlp.PIPELINES


def test_mnist_mlp(run_workload, device, pipeline):
    run_workload(mnist_mlp, device, pipeline)
