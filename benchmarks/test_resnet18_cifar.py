"""resnet18_cifar (seed 004) on every selected device and pipeline: test_resnet18_cifar[<device>-<pipeline>]."""

import pytest

from devicebench.workloads import resnet18_cifar

WORKLOAD = resnet18_cifar  # the plugin parametrizes `pipeline` with the pipelines it offers


def require_timm_and_torchvision() -> None:
    """Skip, saying why, where this torch has no matching torchvision (and so no timm): mnist_mlp still runs.

    A torchvision built for another torch fails at import with a RuntimeError ("operator torchvision::nms does not
    exist"), not an ImportError, so pytest.importorskip alone would turn it into an error. Checked when a row
    runs rather than when this file is collected: importing timm takes ~1.5 s, which a run of `-k mnist` need not
    pay."""
    try:
        import timm  # noqa: F401
        import torchvision  # noqa: F401
    except Exception as error:  # noqa: BLE001 - any failure to import them means the same thing here
        pytest.skip(f"resnet18_cifar needs torchvision and timm matching this torch: {type(error).__name__}: "
                    f"{str(error).splitlines()[0] if str(error) else ''}")


def test_resnet18_cifar(run_workload, device, pipeline):
    require_timm_and_torchvision()
    run_workload(WORKLOAD, device, pipeline)
