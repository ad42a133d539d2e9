"""devicebench scaling end to end on the cpu: torchrun, two gloo ranks, DistributedDataParallel, and a rank that
dies or stops answering (slow: each launch starts fresh processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def scaling(tmp_path: Path, *arguments: str, fault: str | None = None, workload: str = "mnist_mlp",
            timeout: float = 300) -> tuple[subprocess.CompletedProcess, float]:
    """``devicebench scaling`` in a fresh process, and how long it took; a launch that never ends fails the test
    at ``timeout``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DEVICEBENCH_WORKLOADS": "tests.tiny_workload"}
    env.pop("DEVICEBENCH_PLANTED_FAULT", None)
    if fault:
        env["DEVICEBENCH_PLANTED_FAULT"] = fault
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "devicebench", "scaling", "--name", "s", "--output-dir",
                           str(tmp_path), *arguments, "--", "--device", "cpu", "--scale", "quick", "--data",
                           "synthetic", "--workload", workload, "--pipeline", "resident"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=timeout)
    return done, time.monotonic() - started


@pytest.mark.slow
def test_two_gloo_ranks_give_the_figures_and_the_identity_of_a_data_parallel_row(tmp_path):
    done, _ = scaling(tmp_path, "--world-sizes", "1,2", "--launches", "1")
    assert done.returncode == 0, done.stderr + done.stdout
    data = json.loads((tmp_path / "s.json").read_text())
    assert data["devicebench"]["interrupted"] is False
    by_size = {entry["world_size"]: entry["rows"][0]["extra"] for entry in data["launches"]}
    two = by_size[2]
    assert (two["world_size"], two["distributed_backend"], two["scaling_view"]) == (2, "gloo", "weak")
    assert two["nccl_version"] is None and two["gpu_topology"] is None
    # The post's MLP: 784x128, 128x256, 256x10 weights and their biases, float32, all trained.
    assert two["all_reduce_bytes_per_step"] == 4 * (784 * 128 + 128 + 128 * 256 + 256 + 256 * 10 + 10)
    assert 0 < two["communication_share"] <= 1
    process = two["processes"][0]
    assert len(process["rank_train_seconds"]) == 2
    assert process["ranks_samples_per_s"] > 0
    assert "E(N)" in done.stdout and "mnist_mlp[cpu-resident]" in done.stdout


@pytest.mark.slow
def test_a_rank_that_dies_ends_the_launch_naming_it_and_the_same_command_resumes_after_the_finished_one(tmp_path):
    done, _ = scaling(tmp_path, "--world-sizes", "1,2", "--launches", "1", fault="die:1:2",
                            workload="tiny_linear")
    assert done.returncode == 2
    assert "rank 1 of 2 died in test_workload[tiny_linear-resident-cpu] after round 2" in done.stderr
    data = json.loads((tmp_path / "s.json").read_text())
    assert data["devicebench"]["interrupted"] is True
    assert [entry["world_size"] for entry in data["launches"]] == [1]

    again, _ = scaling(tmp_path, "--world-sizes", "1,2", "--launches", "1", workload="tiny_linear")
    assert again.returncode == 0, again.stderr + again.stdout
    assert "launch 1/2: world size 1, weak view: already measured, kept" in again.stdout
    data = json.loads((tmp_path / "s.json").read_text())
    assert data["devicebench"]["interrupted"] is False
    assert [entry["world_size"] for entry in data["launches"]] == [1, 2]
    assert not (tmp_path / ".s.launches").exists()


@pytest.mark.slow
def test_a_rank_that_stops_answering_is_named_once_the_collective_timeout_ends_the_wait(tmp_path):
    # The bound is the collective timeout (ranks that start apart on a busy machine must still meet within it):
    # the launch ends, naming the rank, rather than waiting on it; subprocess.run's timeout fails a launch that hangs.
    done, _ = scaling(tmp_path, "--world-sizes", "1,2", "--launches", "1", "--collective-timeout", "20s",
                            fault="hang:1:2", workload="tiny_linear")
    assert done.returncode == 2
    assert "rank 1 of 2 stopped answering in test_workload[tiny_linear-resident-cpu] after round 2: it issued" \
           in done.stderr
