"""Counts noise cannot move (devicebench/counts.py): exact, the same in every process, and a planted extra operator
per step is seen by exactly its size and fails the gate from one process a side."""

from __future__ import annotations

import types

import pytest
import torch

from devicebench import counts
from devicebench.scales import scale_for
from devicebench.workloads import base, mnist_mlp
from devicebench.workloads.base import RunConfig
from pytest_runs import QUICK_TINY, TINY_WORKLOAD, run_pytest


def counted(pipeline: str) -> dict:
    config = RunConfig(device=torch.device("cpu"), pipeline=pipeline, data_mode="synthetic",
                       scale=scale_for("mnist_mlp", "quick"))
    return counts.count_step(base.build(mnist_mlp, config))


def lone_clone_counts() -> tuple[int, int]:
    """aten operators and kernels (operators calling no other) of one clone() of a parameter, as the profiler sees."""
    parameter = torch.nn.Parameter(torch.rand(4, 4))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler, torch.no_grad():
        parameter.clone()
    fields = counts.per_step(profiler.events(), 1, on_cuda=False, allocations=None)
    return fields["ops_per_step"], fields["kernels_per_step"]


def test_one_planted_clone_per_step_adds_exactly_its_operators_and_kernels():
    from tests.doubles.extra_op import clone_after_every_step

    before = counted("resident")
    handle = clone_after_every_step()
    try:
        after = counted("resident")
    finally:
        handle.remove()
    ops, kernels = lone_clone_counts()
    assert ops >= 1 and kernels >= 1 and before["counted_steps"] == after["counted_steps"] > 1
    assert after["ops_per_step"] - before["ops_per_step"] == pytest.approx(ops, abs=1e-9)
    assert after["kernels_per_step"] - before["kernels_per_step"] == pytest.approx(kernels, abs=1e-9)
    assert before["syncs_per_step"] is None and before["allocations_per_step"] is None  # not reported on the cpu


def test_per_step_counts_cuda_kernels_syncs_and_leaves_copies_out():
    cpu, cuda = torch.autograd.DeviceType.CPU, torch.autograd.DeviceType.CUDA
    events = [types.SimpleNamespace(name=name, device_type=kind, cpu_children=[]) for name, kind in [
        ("aten::mm", cpu), ("aten::add_", cpu), ("cudaLaunchKernel", cpu), ("cudaStreamSynchronize", cpu),
        ("ampere_sgemm_128x64", cuda), ("vectorized_elementwise_kernel", cuda), ("Memcpy DtoH (Device -> Pinned)",
                                                                                 cuda)]]
    fields = counts.per_step(events, 2, on_cuda=True, allocations=6)
    assert fields == {"ops_per_step": 1.0, "kernels_per_step": 1.0, "syncs_per_step": 0.5,
                      "allocations_per_step": 3.0, "counted_steps": 2}


@pytest.mark.slow
def test_step_counts_are_the_same_in_two_processes_and_a_planted_clone_fails_the_gate(tmp_path):
    """Counts noise cannot move (counts.py), from one process a side: two processes of the same code count the
    same; one clone() planted after every optimizer step is a change the gate fails on. The uncompiled pipelines
    only: a compiled row's C++ build is most of a process here, and two processes of the tuned row are checked in
    test_workloads.py's third-workload test."""
    runs = []
    for name, extra in (("first", []), ("second", []), ("planted", ["-p", "tests.doubles.extra_op",
                                                                    "--extra-clone-per-step"])):
        out = tmp_path / f"{name}.json"
        result = run_pytest(*QUICK_TINY, "--pipeline", "seed,resident", *extra, "--benchmark-json", str(out),
                            cwd=tmp_path,
                            env_extra=TINY_WORKLOAD)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        runs.append(out)
    from devicebench import counts, results

    first, second, planted = ([row.extra for row in results.load_run(path).rows] for path in runs)
    for one, other in zip(first, second):
        assert all(one[field] == other[field] for field in ("ops_per_step", "kernels_per_step"))
        assert one["ops_per_step"] > 0 and one["counted_steps"] == counts.COUNTED_STEPS
    assert all(p["ops_per_step"] > f["ops_per_step"] for f, p in zip(first, planted))
    # The gate judged on the counts alone: each run is given the first run's timings, because rows of a few ms
    # can differ by 2x between two processes when other tests share the two cores (CI, 2026-12-02), and this test
    # is about the counts.
    no_calibration = ["--calibration", str(tmp_path / "none.json")]
    same = with_timings_of(runs[1], runs[0], tmp_path / "second-timed-as-first.json")
    grown = with_timings_of(runs[2], runs[0], tmp_path / "planted-timed-as-first.json")
    # Same counts: the times of one process a side cannot be judged uncalibrated, so the gate cannot pass (2) ...
    assert cli_main(["compare", str(runs[0]), str(same), "--fail-on-regression", *no_calibration]) == 2
    # ... and grown counts fail it whatever the times say (1).
    assert cli_main(["compare", str(runs[0]), str(grown), "--fail-on-regression", *no_calibration]) == 1


def with_timings_of(run_file, timing_file, target):
    """``run_file`` with every row's round times taken from the same row of ``timing_file``."""
    import json

    data, timing = json.loads(run_file.read_text()), json.loads(timing_file.read_text())
    times = {bench["name"]: bench for bench in timing["benchmarks"]}
    for bench in data["benchmarks"]:
        source = times[bench["name"]]
        bench["extra_info"]["processes"] = source["extra_info"]["processes"]
        bench["stats"] = source["stats"]
    target.write_text(json.dumps(data))
    return target


def cli_main(argv: list[str]) -> int:
    from devicebench import cli

    return cli.main(argv)
