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
