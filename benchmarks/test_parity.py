"""Correctness across devices: a few training steps on each accelerator must match the cpu (parity.py).

test_parity[<device>-<workload>]: skipped for the cpu itself (it is the reference) and for absent devices.
"""

import pytest

from devicebench import parity
from devicebench.workloads import all_workloads

WORKLOADS = all_workloads()


@pytest.mark.parametrize("workload", list(WORKLOADS.values()), ids=list(WORKLOADS))
def test_parity(device, workload, record_property):
    if device.type == "cpu":
        pytest.skip("parity: the cpu is the reference; this compares mps or cuda against it")
    report = parity.check(workload.parity_case, device)
    record_property("max_loss_rel_diff", report.max_loss_rel_diff)
    record_property("max_param_rel_diff", report.max_param_rel_diff)
    print(f"{workload.NAME} on {device}: largest relative difference from the cpu: "
          f"loss {report.max_loss_rel_diff:.3g}, parameters {report.max_param_rel_diff:.3g}")
    assert report.ok, f"{device} disagrees with the cpu on {workload.NAME}:\n" + "\n".join(report.mismatches)
