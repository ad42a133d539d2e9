"""The mps paths' defences, tested without Apple hardware (docs/mps.md): no copy of the kinds torch's open mps
bugs corrupt, operators that fell back to the cpu seen and said, a wrong result never passed as a time."""

from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path

import pytest
import torch

from devicebench import cli, devices, fallback
from devicebench.errors import DevicebenchError
from devicebench.measure import measure_row
from devicebench.scales import Scale
from devicebench.workloads.base import RunConfig, WorkloadRun
from tests.doubles.fakes import RecordingTimer

REPO = Path(__file__).resolve().parents[1]
MPS = torch.device("mps")


@pytest.fixture
def recorded_copies(monkeypatch):
    """Tensor.to and copy_ recorded instead of run when they target mps: (target, non_blocking, dtype)."""
    calls = []
    real_to = torch.Tensor.to

    def to(self, *args, **kwargs):
        target = next((a for a in args if isinstance(a, (torch.device, str))), kwargs.get("device"))
        dtype = next((a for a in args if isinstance(a, torch.dtype)), kwargs.get("dtype"))
        calls.append((torch.device(target) if target is not None else None, kwargs.get("non_blocking", False),
                      dtype, self.is_contiguous()))
        return self if target is not None and torch.device(target).type == "mps" else real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", to)
    return calls


class OrderOnly(WorkloadRun):
    samples_per_round = 10
    train_epoch = validate = final_evaluation = None


def test_shuffled_order_is_copied_to_mps_blocking(recorded_copies):
    run = OrderOnly(RunConfig(device=MPS, pipeline="resident", scale=Scale("toy", 10, 10, 10, 10, 0, 1)))
    order = run.shuffled_order(10)
    assert sorted(order.tolist()) == list(range(10))
    # pytorch/pytorch#189690, #139550: a non-blocking copy of a released pageable tensor to mps reads freed memory.
    assert recorded_copies == [(MPS, False, None, True)], "shuffled_order must copy to mps blocking"


def test_a_non_dense_view_is_made_dense_before_it_goes_to_mps(recorded_copies):
    view = torch.arange(12).reshape(3, 4).t()  # #189961: non-dense views copied to mps gave wrong values
    devices.to_device(view, MPS)
    assert recorded_copies == [(MPS, False, None, True)]


def test_device_values_reach_the_cpu_before_their_dtype_changes(recorded_copies):
    devices.to_host_float32(torch.ones(3, dtype=torch.float16))
    # #189563: an mps-to-cpu copy that also converts the dtype; the move and the conversion are separate calls.
    assert recorded_copies[0][:3] == (torch.device("cpu"), False, None)


def test_every_non_blocking_copy_in_the_library_is_on_a_cuda_only_path():
    """The rule, kept by a check a later change cannot slip past: a ``non_blocking=True`` copy is allowed only
    where the code says, on the same line or the three above, that the path is cuda's."""
    offenders = []
    for path in sorted((REPO / "devicebench").rglob("*.py")):
        lines = path.read_text().splitlines()
        for number, line in enumerate(lines):
            if "non_blocking=True" in line and not line.lstrip().startswith("#"):
                context = "\n".join(lines[max(0, number - 3):number + 1])
                if "cuda" not in context:
                    offenders.append(f"{path.relative_to(REPO)}:{number + 1}: {line.strip()}")
    assert not offenders, "non_blocking copies outside a cuda-only path (docs/mps.md):\n" + "\n".join(offenders)


# ------------------------------------------------------------------------------------------------ cpu fallback
TORCH_TEXT = ("The operator '{}' is not currently supported on the MPS backend and will fall back to run on the "
              "CPU. This may have performance implications.")


def test_operators_that_fell_back_to_the_cpu_are_recorded_from_torchs_own_warning():
    with pytest.warns(UserWarning, match="unrelated"):  # other warnings pass through unchanged
        with fallback.watch(MPS) as ops:
            for name in ("aten::_linalg_svd.U", "aten::lerp.Scalar_out", "aten::_linalg_svd.U"):
                warnings.warn(TORCH_TEXT.format(name), UserWarning)
            warnings.warn("an unrelated warning", UserWarning)
    assert ops == ["aten::_linalg_svd.U", "aten::lerp.Scalar_out"]
    assert fallback.summary(ops) == "mps, 2 operators on the CPU: aten::_linalg_svd.U, aten::lerp.Scalar_out"
    assert not torch.is_warn_always_enabled()  # restored: torch warns once per operator again


def test_fallback_watch_leaves_other_devices_alone():
    with fallback.watch(torch.device("cpu")) as ops:
        assert not torch.is_warn_always_enabled()
    assert ops == []


@pytest.mark.parametrize("value, enabled", [("1", True), ("0", False), ("", False)])
def test_the_fallback_variable_is_read_as_torch_reads_it(monkeypatch, value, enabled):
    monkeypatch.setenv(fallback.ENVIRONMENT_VARIABLE, value)
    assert fallback.fallback_enabled() is enabled


def test_compare_says_which_operators_of_an_mps_row_ran_on_the_cpu(tmp_path, capsys):
    data = json.loads((REPO / "tests" / "runs" / "m1_mps.json").read_text())
    for bench in data["benchmarks"]:
        bench["extra_info"].update(mps_fallback_enabled=True, cpu_fallback_ops=["aten::lerp.Scalar_out"])
    (tmp_path / "m1.json").write_text(json.dumps(data))
    assert cli.main(["compare", str(tmp_path / "m1.json"), str(REPO / "tests" / "runs" / "gtx1060_cuda.json")]) == 0
    assert "mps, 1 operator on the CPU: aten::lerp.Scalar_out" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------ wrong results
class Diverging(WorkloadRun):
    samples_per_round = 10

    def train_epoch(self, waits):
        return 0.0

    def validate(self, waits):
        return 0.0

    def final_evaluation(self):
        return math.nan, 0.1


def test_a_row_whose_validation_loss_is_not_finite_fails_instead_of_reporting_a_time():
    import types

    workload = types.SimpleNamespace(NAME="diverging", VERSION=1, HAS_CONVOLUTIONS=False,
                                     RUNS={"resident": Diverging}, flop_counts=None)
    config = RunConfig(device=torch.device("cpu"), pipeline="resident", scale=Scale("toy", 10, 10, 10, 10, 0, 2))
    with pytest.raises(DevicebenchError, match=re.escape("ended with a validation loss of nan: the device "
                                                         "computed wrong values")):
        measure_row(workload, config, "cpu", RecordingTimer([]))


def test_parity_runs_once_per_accelerator_and_workload_and_marks_its_rows(monkeypatch):
    import types

    from devicebench import parity
    from devicebench.workloads import mnist_mlp
    from fixtures import plugin

    checked = []

    def fake_check(make_case, device):
        checked.append(device.type)
        return parity.ParityReport(0.2, 0.5, ["step 1: loss 0.1 on the device vs 2.3 on the cpu"])

    monkeypatch.setattr(parity, "check", fake_check)
    from devicebench.options import RowOptions

    config = types.SimpleNamespace(devicebench_options=RowOptions(), stash=pytest.Stash())
    first = plugin.parity_before_rows(config, mnist_mlp, MPS)
    again = plugin.parity_before_rows(config, mnist_mlp, MPS)
    assert checked == ["mps"] and first == again and first["parity_failed"] is True
    assert plugin.parity_before_rows(config, mnist_mlp, torch.device("cpu")) == {}  # the reference itself


def test_a_device_that_failed_parity_is_never_ranked(tmp_path, capsys):
    data = json.loads((REPO / "tests" / "runs" / "m1_mps.json").read_text())
    for bench in data["benchmarks"]:
        if bench["extra_info"]["device"] == "mps":
            bench["extra_info"]["parity_failed"] = True
    (tmp_path / "m1.json").write_text(json.dumps(data))
    gtx = REPO / "tests" / "runs" / "gtx1060_cuda.json"
    assert cli.main(["compare", str(gtx), str(tmp_path / "m1.json"), "--view", "devices"]) == 0
    assert "not ranked: parity with the cpu FAILED" in capsys.readouterr().out
    from devicebench import compare, results

    _, tables = compare.build_tables([results.load_run(gtx), results.load_run(tmp_path / "m1.json")], view="devices")
    mps_verdicts = [verdict for table in tables for column, verdict in zip(table.columns, table.verdicts)
                    if column.device == "mps"]
    assert mps_verdicts and all(verdict is None for verdict in mps_verdicts)
    # As the baseline device it ranks nothing against itself either.
    _, tables = compare.build_tables([results.load_run(tmp_path / "m1.json"), results.load_run(gtx)],
                                     view="devices", baseline_device="mps")
    assert all(verdict is None for table in tables for verdict in table.verdicts)


def test_the_checks_made_before_a_row_are_saved_with_it():
    from tests.test_trust import sleepy_workload

    config = RunConfig(device=torch.device("cpu"), pipeline="resident", scale=Scale("toy", 100, 10, 10, 10, 0, 2))
    checks = {"parity_failed": True, "parity_max_param_rel_diff": 0.5}
    extra = measure_row(sleepy_workload([0.0] * 2), config, "cpu", RecordingTimer([]), checks=checks,
                        count_steps=False)
    assert extra["parity_failed"] is True  # what either front writes to the file


class FakeAcceleratorMemory:
    """torch.accelerator's memory statistics as an mps torch offers them (or a backend that reads 0 or raises)."""

    def __init__(self, peak):
        self.peak, self.resets = peak, 0

    def max_memory_allocated(self):
        if isinstance(self.peak, Exception):
            raise self.peak
        return self.peak

    def reset_peak_memory_stats(self):
        self.resets += 1


@pytest.mark.parametrize("peak, recorded", [(123_456, 123_456), (0, None), (RuntimeError("no stats"), None)])
def test_mps_peak_memory_comes_from_torch_accelerator_and_is_absent_not_zero(monkeypatch, peak, recorded):
    from devicebench import devices

    fake = FakeAcceleratorMemory(peak)
    monkeypatch.setattr(torch, "accelerator", fake, raising=False)
    mps = torch.device("mps")
    devices.reset_peak_memory(mps)
    assert fake.resets == 1 and devices.peak_memory_bytes(mps) == recorded


def test_a_torch_without_accelerator_memory_statistics_records_no_mps_peak(monkeypatch):
    from devicebench import devices

    monkeypatch.setattr(torch, "accelerator", object(), raising=False)
    devices.reset_peak_memory(torch.device("mps"))
    assert devices.peak_memory_bytes(torch.device("mps")) is None
