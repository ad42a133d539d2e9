"""Numbers you can trust: stability flags, the peak table and utilization, FLOP counts."""

from __future__ import annotations

import statistics
import time
import types

import pytest
import torch

from devicebench import devices, efficiency, stability
from devicebench.flops import FlopCounts
from devicebench.measure import measure_row
from devicebench.scales import Scale
from devicebench.workloads import mnist_mlp, resnet18_cifar
from devicebench.workloads import base
from devicebench.workloads.base import RunConfig, Stopwatch, WorkloadRun
from tests.doubles.fakes import RecordingTimer


def test_steady_rounds_are_not_flagged():
    assert stability.assess([0.100, 0.102, 0.099, 0.101, 0.100]) is None


def test_one_slow_round_is_flagged_with_the_figure():
    reason = stability.assess([0.100, 0.101, 0.250, 0.099, 0.100])
    assert "slowest round 2.50x the median" in reason and "coefficient of variation" in reason


def test_rounds_too_short_to_time_are_flagged():
    assert "too short" in stability.assess([0.0002] * 5)


class SleepyRun(WorkloadRun):
    """A stand-in workload whose rounds sleep for planned durations: a test can inject a noisy round."""

    def __init__(self, config, sleeps, validation_sleep=0.0, sleep=time.sleep):
        super().__init__(config)
        self.sleeps = iter(sleeps)
        self.validation_sleep = validation_sleep
        self.sleep = sleep

    samples_per_round = 100

    def train_epoch(self, waits):
        self.sleep(next(self.sleeps))
        return 0.0

    def validate(self, waits):
        self.sleep(self.validation_sleep)
        return 0.0

    def final_evaluation(self):
        return 0.0, 1.0


def sleepy_workload(sleeps, validation_sleep=0.0, sleep=time.sleep):
    return types.SimpleNamespace(NAME="sleepy", VERSION=1, HAS_CONVOLUTIONS=False,
                                 RUNS={"resident": lambda config: SleepyRun(config, sleeps, validation_sleep, sleep)},
                                 flop_counts=lambda scale: FlopCounts(1e6, 5e5))


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def perf_counter(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.mark.parametrize("sleeps, unstable", [([0.02] * 6, False), ([0.02, 0.02, 0.02, 0.08, 0.02, 0.02], True)])
def test_run_with_an_injected_slow_round_is_flagged_unstable(sleeps, unstable, monkeypatch):
    # A simulated clock that only the workload's "sleeps" move: a loaded machine cannot stretch a steady round.
    clock = FakeClock()
    monkeypatch.setattr(base, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    scale = Scale("toy", 100, 10, 10, 10, warmup_rounds=1, rounds=5)
    config = RunConfig(device=torch.device("cpu"), pipeline="resident", scale=scale)
    extra = measure_row(sleepy_workload(sleeps, sleep=clock.advance), config, "test cpu", RecordingTimer([]),
                        count_steps=False)  # the sleepy workload has its rounds' sleeps only
    assert extra["unstable"] is unstable
    assert (extra["unstable_reason"] is not None) is unstable


def test_flop_counts_match_the_design_figures():
    assert mnist_mlp.flop_counts().train_per_sample == 613_376  # 613 kFLOP per training sample
    counts = resnet18_cifar.flop_counts()
    assert counts.eval_per_sample == pytest.approx(0.666e9, rel=1e-3)  # 0.666 GFLOP forward at 96 px
    # The frozen backbone has no backward: training costs barely more than the forward.
    assert counts.eval_per_sample < counts.train_per_sample < 1.001 * counts.eval_per_sample


def test_peak_lookup_by_device_name_and_dtype():
    assert efficiency.peak_tflops("NVIDIA H100 80GB HBM3", "bfloat16") == 989.4
    assert efficiency.peak_tflops("NVIDIA H100 PCIe", "float32") == 51.2
    assert efficiency.peak_tflops("NVIDIA H200", "tf32") == 494.7
    assert efficiency.peak_tflops("Apple M1 Pro GPU", "float32") == 5.2
    assert efficiency.peak_tflops("Apple M1 GPU", "bfloat16") is None  # not published: null, not a guess
    assert efficiency.peak_tflops("Apple M3 Max GPU", "float32") is None
    assert efficiency.peak_tflops("AMD EPYC", "float32") is None


def test_utilization_fields():
    known = efficiency.efficiency_fields(2e12, 0.5, "NVIDIA GeForce GTX 1060 6GB", "float32")
    assert known["achieved_tflops"] == 4.0 and known["utilization"] == pytest.approx(4.0 / 4.4)
    unknown = efficiency.efficiency_fields(2e12, 0.5, "Some NPU", "float32")
    assert unknown["peak_tflops"] is None and unknown["utilization"] is None


def test_float32_convolutions_on_cuda_count_against_the_tf32_peak():
    assert efficiency.compute_dtype("float32", "cuda", True, cudnn_tf32=True, matmul_tf32=False) == "tf32"
    assert efficiency.compute_dtype("float32", "cuda", False, cudnn_tf32=True, matmul_tf32=False) == "float32"
    assert efficiency.compute_dtype("float32", "mps", True, cudnn_tf32=True, matmul_tf32=False) == "float32"
    assert efficiency.compute_dtype("bfloat16", "cuda", True, cudnn_tf32=True, matmul_tf32=False) == "bfloat16"


def test_training_throughput_comes_from_training_time_alone():
    # 20 ms of training and 30 ms of validation a round: 100 samples / 0.02 s, not / 0.05 s.
    scale = Scale("toy", 100, 10, 10, 10, warmup_rounds=0, rounds=3)
    config = RunConfig(device=torch.device("cpu"), pipeline="resident", scale=scale)
    extra = measure_row(sleepy_workload([0.02] * 3, validation_sleep=0.03), config, "cpu", RecordingTimer([]),
                        count_steps=False)
    process, = extra["processes"]
    # Deterministic relations only (sleeps stretch on a loaded machine): throughput is from training time alone.
    assert extra["samples_per_s"] == pytest.approx(100 / statistics.median(process["train_seconds"]))
    assert all(t >= 0.02 for t in process["train_seconds"]) and all(v >= 0.03 for v in process["val_seconds"])
    assert all(t + v <= r + 1e-6 for t, v, r in zip(process["train_seconds"], process["val_seconds"],
                                                    process["round_seconds"]))
    assert extra["samples_per_s"] > 100 / statistics.median(process["round_seconds"])


class SlowStart:
    """An iterable whose iter() takes 50 ms, as a DataLoader starting its worker processes does."""

    def __iter__(self):
        time.sleep(0.05)
        return iter([1, 2])


def test_loader_wait_includes_the_start_of_the_iterator():
    waits = Stopwatch()
    assert list(waits.iterate(SlowStart())) == [1, 2]
    assert waits.seconds >= 0.05


class TickingClock:
    """A simulated clock for the workload's sleeps and keep_busy's wait: each read moves it 1 us (so keep_busy's
    spin ends), each sleep by its length. A loaded machine cannot stretch it (CI once read 0.90x for validation
    with real spins, while another test's processes shared the two cores)."""

    def __init__(self):
        self.now = 1000.0

    def perf_counter(self) -> float:
        self.now += 1e-6
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_the_planted_slowdown_lengthens_each_cpu_epoch_and_validation_by_its_fraction(monkeypatch):
    # Both parts, so that the round time a comparison reads grows by the fraction too (a training-only slowdown
    # showed as 1.045x on rounds whose validation took a tenth of them).
    clock = TickingClock()
    fake_time = types.SimpleNamespace(perf_counter=clock.perf_counter, sleep=clock.sleep)
    monkeypatch.setattr(base, "time", fake_time)
    monkeypatch.setattr(devices, "time", fake_time)
    scale = Scale("toy", 100, 10, 10, 10, warmup_rounds=1, rounds=5)
    medians = {}
    for fraction in (0.0, 0.05):
        config = RunConfig(device=torch.device("cpu"), pipeline="resident", scale=scale, slowdown_fraction=fraction)
        workload = sleepy_workload([0.04] * 6, validation_sleep=0.02, sleep=clock.sleep)
        extra = measure_row(workload, config, "cpu", RecordingTimer([]), count_steps=False)
        assert extra["planted_slowdown_fraction"] == fraction
        medians[fraction] = {field: statistics.median(extra["processes"][0][field])
                             for field in ("train_seconds", "val_seconds", "round_seconds")}
    for field in ("train_seconds", "val_seconds", "round_seconds"):
        assert medians[0.05][field] / medians[0.0][field] == pytest.approx(1.05, abs=0.002), field


@pytest.mark.parametrize("option, variable, expected", [(None, None, 0.0), (None, "0.05", 0.05), (0.1, "0.05", 0.1)])
def test_slowdown_fraction_comes_from_the_option_else_the_environment(option, variable, expected, monkeypatch):
    from devicebench import options

    monkeypatch.delenv(options.SLOWDOWN_VARIABLE, raising=False)
    if variable is not None:
        monkeypatch.setenv(options.SLOWDOWN_VARIABLE, variable)
    assert options.slowdown_fraction(option) == expected


@pytest.mark.parametrize("option, variable", [(1.5, None), (-0.1, None), (None, "five")])
def test_a_bad_slowdown_fraction_is_a_usage_error(option, variable, monkeypatch):
    from devicebench import options
    from devicebench.errors import UsageError

    monkeypatch.setenv(options.SLOWDOWN_VARIABLE, variable or "0")
    with pytest.raises(UsageError, match="fraction"):
        options.slowdown_fraction(option)
