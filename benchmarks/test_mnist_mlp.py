"""mnist_mlp (the 000 post) on every selected device and pipeline: test_mnist_mlp[<device>-<pipeline>]."""

from devicebench.workloads import mnist_mlp

WORKLOAD = mnist_mlp  # the plugin parametrizes `pipeline` with the pipelines it offers


def test_mnist_mlp(run_workload, device, pipeline):
    run_workload(WORKLOAD, device, pipeline)
