"""The benchmarks' quick scale end to end on the cpu, as CI exercises it: one run of every row, profiled, and the
smoke run of the same rows (``--benchmark-disable``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devicebench import devices
from pytest_runs import QUICK_MNIST, REPO, run_pytest

pytestmark = pytest.mark.slow  # the quick run of every row: tests/conftest.py, "Why a slow tier"

MACHINE_FIELDS = ("torch_version", "torch_git_version", "torchvision_version", "timm_version", "cuda_version",
                  "cudnn_version", "mps_built", "mps_available", "accelerators", "devicebench_version")
ROW_FIELDS = ("workload", "workload_version", "device", "device_name", "pipeline", "scale", "data_source",
              "samples_per_round", "samples_per_s", "batch_size", "val_loss", "val_accuracy", "peak_memory_bytes",
              "processes", "loader_wait_fraction")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One quick cpu run of every benchmark, as CI exercises them, profiled (an extra round after everything is
    recorded): (completed process, parsed JSON); the traces are beside the JSON."""
    tmp = tmp_path_factory.mktemp("quick")
    out = tmp / "out.json"
    result = run_pytest(str(REPO / "benchmarks"), "--scale", "quick", "--data", "synthetic", "--pretrained", "no",
                        "--benchmark-json", str(out), "--profile", "-rs", "-k", "not parity", cwd=tmp)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result, json.loads(out.read_text()), tmp


def test_profile_breaks_every_row_down_by_kind_summing_to_the_round(quick_run):
    """--profile: where each row's profiled round went, by kind, adding up to that round (perf_counter) within
    10%; the trace opens as a chrome trace (gzipped JSON) holding the round."""
    import gzip

    from devicebench.profiling import KINDS, ROUND_RANGE

    result, data, run_folder = quick_run
    folder = Path(data["benchmarks"][0]["extra_info"]["profile"]["trace"]).parent
    assert folder == run_folder  # beside --benchmark-json's file, not in the working directory
    for bench in data["benchmarks"]:
        profile = bench["extra_info"]["profile"]
        assert set(profile["seconds"]) == set(KINDS) and min(profile["seconds"].values()) >= 0
        total = sum(profile["seconds"].values())
        assert abs(total - profile["round_seconds"]) <= 0.10 * profile["round_seconds"], (bench["name"], profile)
        assert profile["basis"] == "main thread's ops" and profile["seconds"]["compilation"] == 0
        # Each kind the workloads do is seen: the products, the optimizer, and the seed loader's copies.
        assert profile["seconds"]["matmul_conv"] > 0 and profile["seconds"]["optimizer"] > 0, bench["name"]
        trace = json.loads(gzip.decompress(Path(profile["trace"]).read_bytes()))
        assert any(event.get("name") == ROUND_RANGE for event in trace["traceEvents"])
    seed = next(b for b in data["benchmarks"] if b["name"] == "test_mnist_mlp[cpu-seed]")["extra_info"]["profile"]
    assert seed["seconds"]["data_movement"] > 0
    assert not list(folder.glob("*.part")) and not list(folder.glob("*.export.json"))
    # The terminal says where each trace is and what its round was made of (it said nothing of the profile).
    assert "devicebench: profiles (--profile)" in result.stdout
    assert "test_mnist_mlp[cpu-seed]: " in result.stdout and f"; trace {seed['trace']} (open in" in result.stdout


def test_quick_run_writes_the_rows_with_machine_info_and_extra_info(quick_run):
    _, data, _ = quick_run
    machine = data["machine_info"]
    for field in MACHINE_FIELDS:
        assert field in machine, field
    assert "hz_actual" not in machine["cpu"] and "hz_actual_friendly" not in machine["cpu"]
    rows = {bench["name"]: bench["extra_info"] for bench in data["benchmarks"]}
    for name in ("test_mnist_mlp[cpu-seed]", "test_mnist_mlp[cpu-resident]", "test_char_gpt[cpu-seed]",
                 "test_char_gpt[cpu-resident]", "test_resnet18_cifar[cpu-seed]", "test_resnet18_cifar[cpu-resident]"):
        assert name in rows, sorted(rows)
        extra = rows[name]
        for field in ROW_FIELDS:
            assert field in extra, (name, field)
        assert extra["device"] == "cpu" and extra["scale"] == "quick" and extra["data_source"] == "synthetic"
        assert extra["samples_per_s"] > 0 and 0 <= extra["loader_wait_fraction"] < 1
    for name in ("test_resnet18_cifar[cpu-seed]", "test_resnet18_cifar[cpu-resident]"):
        assert rows[name]["pretrained"] == "none" and rows[name]["optimizer"] == "ranger21"
    assert rows["test_resnet18_cifar[cpu-seed]"]["workers"] == 0
    gpt = rows["test_char_gpt[cpu-resident]"]
    assert gpt["tokens_per_s"] == pytest.approx(gpt["samples_per_s"] * 64)
    assert gpt["ms_per_iteration"] == pytest.approx(1000 * 16 / gpt["samples_per_s"])


# The tuned pipeline must still train: its validation loss after the timed rounds stays within 5% (+0.01 for
# losses near zero) of resident's. On the cpu tuned keeps float32 and the two agree to ~1e-6; on an H200, bf16
# autocast moved resnet18_cifar's 0.0442 to 0.0450 and mnist_mlp's 0.00006 to 0.00009 (standard scale). char_gpt's
# tuned attention draws its dropout masks apart from resident's, so the two agree as two trainings do, not exactly.
TUNED_VAL_LOSS_RTOL, TUNED_VAL_LOSS_ATOL = 0.05, 0.01


def test_tuned_rows_record_their_choices_and_still_train(quick_run):
    _, data, _ = quick_run
    rows = {bench["name"]: bench["extra_info"] for bench in data["benchmarks"]}
    for workload in ("mnist_mlp", "resnet18_cifar", "char_gpt"):
        tuned, resident = rows[f"test_{workload}[cpu-tuned]"], rows[f"test_{workload}[cpu-resident]"]
        for field in ("dtype", "channels_last", "compiled", "cuda_graphs", "compile_s", "tuning_notes"):
            assert field in tuned, field
        assert tuned["dtype"] == "float32" and tuned["cuda_graphs"] is False
        assert tuned["val_loss"] == pytest.approx(resident["val_loss"], rel=TUNED_VAL_LOSS_RTOL,
                                                  abs=TUNED_VAL_LOSS_ATOL)
        assert tuned["flops_per_sample"] > 0 and tuned["achieved_tflops"] > 0
        assert tuned["peak_tflops"] is None and tuned["utilization"] is None  # no published cpu peaks


def test_absent_devices_are_skipped_with_their_reasons(quick_run):
    result, _, _ = quick_run
    assert "warm-up" not in result.stdout  # progress stays off when output is not a terminal
    if not devices.probe("cuda").available:
        assert "SKIPPED" in result.stdout and "cuda: " in result.stdout
    if not devices.probe("mps").available:
        assert "mps: this torch build has no MPS support" in result.stdout or "mps: torch is built" in result.stdout


def test_benchmark_disable_is_a_one_round_smoke_run_that_saves_nothing(tmp_path, quick_run):
    out = tmp_path / "out.json"
    result = run_pytest(*QUICK_MNIST, "--benchmark-disable", "--benchmark-max-time", "3",
                        "--benchmark-json", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "3 passed" in result.stdout and not out.exists()
    assert "--benchmark-max-time does not apply to devicebench's rows" in result.stdout
