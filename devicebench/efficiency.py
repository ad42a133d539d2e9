"""Achieved TFLOP/s against the device's published peak (``peaks.toml``), where the peak is known."""

from __future__ import annotations

from devicebench.tables import load_table


def _devices() -> list[dict]:
    return load_table("peaks")["device"]


def peak_tflops(device_name: str | None, compute_dtype: str) -> float | None:
    """The published dense peak for this device and dtype, or None when it is not known."""
    if not device_name:
        return None
    name = device_name.lower()
    for entry in _devices():
        if entry["match"].lower() in name:
            value = entry.get(compute_dtype)
            return float(value) if value is not None else None
    return None


def compute_dtype(dtype: str, device_type: str, has_convolutions: bool, cudnn_tf32: bool,
                  matmul_tf32: bool) -> str:
    """Which peak applies: float32 work runs on tensor cores as TF32 where torch allows it on cuda.

    torch's defaults (recorded with every result): cuDNN convolutions may use TF32, matmuls may not. So a float32
    conv net on an Ampere-or-later GPU is held against the TF32 peak, a float32 MLP against the FP32 peak.
    """
    if dtype != "float32" or device_type != "cuda":
        return dtype
    if (has_convolutions and cudnn_tf32) or (not has_convolutions and matmul_tf32):
        return "tf32"
    return "float32"


def efficiency_fields(flops_per_round: float, median_seconds: float, device_name: str | None,
                      dtype: str) -> dict:
    achieved = flops_per_round / median_seconds / 1e12
    peak = peak_tflops(device_name, dtype)
    return {"achieved_tflops": achieved, "peak_tflops": peak, "peak_dtype": dtype,
            "utilization": achieved / peak if peak else None}
