"""The parity check's logic, on the cpu: a perturbed "device" is caught, with details (that identical runs agree, for
every built-in workload: tests/test_workloads.py)."""

import torch

from devicebench import parity
from devicebench.workloads import mnist_mlp

CPU = torch.device("cpu")


def test_a_perturbed_device_fails_naming_the_step_values_and_tolerance():
    def perturb(step, model):  # a device that gets the second update slightly wrong
        if step == 1:
            with torch.no_grad():
                model.hidden1.weight.mul_(1.05)

    report = parity.check(lambda: mnist_mlp.parity_case(steps=4), CPU, perturb=perturb)
    assert not report.ok
    first = report.mismatches[0]
    assert first.startswith("step 3: loss") and "on the device vs" in first and "tolerance" in first
    assert any("hidden1.weight differs" in line for line in report.mismatches)


def test_a_device_returning_nan_fails():
    def poison(step, model):
        with torch.no_grad():
            model.out.bias.fill_(float("nan"))

    report = parity.check(lambda: mnist_mlp.parity_case(steps=2), CPU, perturb=poison)
    assert not report.ok and "step 2" in report.mismatches[0]


def test_tf32_is_restored_after_the_check():
    before = torch.backends.cudnn.allow_tf32
    parity.check(lambda: mnist_mlp.parity_case(steps=1), CPU)
    assert torch.backends.cudnn.allow_tf32 == before
