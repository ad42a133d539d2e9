"""Device selection, skip reasons (with faked backends), and the per-device operations."""

from __future__ import annotations

import pytest
import torch

from devicebench import devices
from devicebench.errors import UsageError


def test_parse_device_list_keeps_order_and_drops_repeats():
    assert devices.parse_device_list("cuda, cpu,cuda") == ["cuda", "cpu"]


@pytest.mark.parametrize("text", ["tpu", "cpu,gpu", "", " , "])
def test_unknown_device_is_a_usage_error_listing_the_valid_ones(text):
    with pytest.raises(UsageError, match="valid devices are cpu, mps, cuda"):
        devices.parse_device_list(text)


def test_cpu_is_always_available_with_its_model_name():
    status = devices.probe("cpu")
    assert status.available and status.name and status.skip_reason is None


def test_mps_not_built_says_what_was_checked(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_built", lambda: False)
    status = devices.probe("mps")
    assert not status.available
    assert status.skip_reason == "mps: this torch build has no MPS support (torch.backends.mps.is_built() is False)"


def test_mps_built_but_unavailable(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_built", lambda: True)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    status = devices.probe("mps")
    assert not status.available and "torch.backends.mps.is_available() is False" in status.skip_reason


def test_mps_present_is_named_after_the_apple_chip(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_built", lambda: True)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(devices, "_sysctl", lambda key: "Apple M1")
    status = devices.probe("mps")
    assert status.available and status.name == "Apple M1 GPU"


def test_cuda_not_built(monkeypatch):
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: False)
    status = devices.probe("cuda")
    assert not status.available and "torch.backends.cuda.is_built() is False" in status.skip_reason


def test_cuda_built_without_gpu(monkeypatch):
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    status = devices.probe("cuda")
    assert not status.available and "torch.cuda.is_available() is False" in status.skip_reason


def _fake_gpu(monkeypatch, name, capability, arch_list):
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: name)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=0: capability)
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: arch_list)


def test_pascal_gpu_on_a_build_without_its_kernels_is_skipped_with_the_fix(monkeypatch):
    _fake_gpu(monkeypatch, "NVIDIA GeForce GTX 1060", (6, 1), ["sm_75", "sm_80", "sm_90", "sm_100", "sm_120"])
    status = devices.probe("cuda")
    assert not status.available
    assert "GTX 1060 is sm_61" in status.skip_reason and "cu126" in status.skip_reason


def test_gpu_with_matching_kernels_or_ptx_is_available(monkeypatch):
    _fake_gpu(monkeypatch, "NVIDIA H100 80GB HBM3", (9, 0), ["sm_80", "sm_90"])
    assert devices.probe("cuda").available
    _fake_gpu(monkeypatch, "future GPU", (12, 1), ["sm_90", "compute_90"])
    assert devices.probe("cuda").available


# torch.cuda.get_arch_list() of the three CUDA lines of a current torch, and where each was read:
ARCH_LISTS = {
    # cu126: PyTorch's wheel build script (.ci/manywheel/build_cuda.sh), TORCH_CUDA_ARCH_LIST
    # "5.0;6.0;7.0;7.5;8.0;8.6;9.0" for CUDA 12.6 (../shared/DESIGN.md, checked 2026-11-23).
    "cu126": ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"],
    # cu128: the same script's list for torch 2.8's CUDA 12.8 wheels, "7.0;7.5;8.0;8.6;9.0;10.0;12.0".
    "cu128": ["sm_70", "sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"],
    # cu130: read from torch 2.14.1+cu130 on this project's CI machine (torch._C._cuda_getArchFlags()).
    "cu130": ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"],
}
GPUS = {  # name: compute capability
    "NVIDIA GeForce GTX 1060 6GB": (6, 1), "NVIDIA GeForce GTX 1080 Ti": (6, 1), "Tesla T4": (7, 5),
    "NVIDIA GeForce RTX 3090": (8, 6), "NVIDIA GeForce RTX 4090": (8, 9), "NVIDIA H100 80GB HBM3": (9, 0),
    "NVIDIA GeForce RTX 5090": (12, 0),
}
RUNS_ON = {  # which build runs which GPU (a cubin sm_XY serves the same major with minor >= Y)
    "cu126": {"NVIDIA GeForce GTX 1060 6GB", "NVIDIA GeForce GTX 1080 Ti", "Tesla T4", "NVIDIA GeForce RTX 3090",
              "NVIDIA GeForce RTX 4090", "NVIDIA H100 80GB HBM3"},
    "cu128": {"Tesla T4", "NVIDIA GeForce RTX 3090", "NVIDIA GeForce RTX 4090", "NVIDIA H100 80GB HBM3",
              "NVIDIA GeForce RTX 5090"},
    "cu130": {"Tesla T4", "NVIDIA GeForce RTX 3090", "NVIDIA GeForce RTX 4090", "NVIDIA H100 80GB HBM3",
              "NVIDIA GeForce RTX 5090"},
}


@pytest.mark.parametrize("build", list(ARCH_LISTS))
@pytest.mark.parametrize("gpu", list(GPUS))
def test_real_wheel_architecture_lists_against_real_gpus(monkeypatch, build, gpu):
    _fake_gpu(monkeypatch, gpu, GPUS[gpu], ARCH_LISTS[build])
    status = devices.probe("cuda")
    assert status.available is (gpu in RUNS_ON[build]), status.skip_reason
    if not status.available:
        assert f"is sm_{GPUS[gpu][0]}{GPUS[gpu][1]}" in status.skip_reason and "cu126" in status.skip_reason


@pytest.mark.parametrize("arch, capability, runs", [
    ("sm_90a", (9, 0), True), ("sm_90a", (9, 1), False),  # arch-specific: exactly 9.0
    ("sm_100f", (10, 3), True), ("sm_100a", (10, 3), False),  # family-specific: same major, minor >= 0
    ("compute_90", (12, 0), True), ("compute_90", (8, 9), False),  # PTX: JIT for newer GPUs only
    ("sm_86", (8, 9), True), ("sm_86", (8, 0), False), ("sm_80", (9, 0), False),  # no cubin across majors
    ("gfx90a", (9, 0), False),
])
def test_architecture_entries_follow_the_cuda_compatibility_rules(arch, capability, runs):
    assert devices._arch_runs_on(arch, capability) is runs


def test_sync_waits_on_the_right_backend(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append("cuda"))
    monkeypatch.setattr(torch.mps, "synchronize", lambda: calls.append("mps"))
    devices.sync(torch.device("cpu"))
    devices.sync(torch.device("cuda"))
    devices.sync(torch.device("mps"))
    assert calls == ["cuda", "mps"]


def test_peak_memory_is_none_where_the_backend_has_no_peak(monkeypatch):
    assert devices.peak_memory_bytes(torch.device("cpu")) is None
    assert devices.peak_memory_bytes(torch.device("mps")) is None
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 123)
    assert devices.peak_memory_bytes(torch.device("cuda")) == 123


def test_out_of_memory_is_recognised_for_every_backend():
    assert devices.is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert devices.is_out_of_memory(RuntimeError("MPS backend out of memory (MPS allocated: 8 GB)"))
    assert not devices.is_out_of_memory(RuntimeError("shape mismatch"))
