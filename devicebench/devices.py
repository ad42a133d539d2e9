"""Which devices this machine has, why the others are missing, and the few per-device operations a benchmark needs.

Every backend gets the same three operations, so no benchmark special-cases a device string:
``sync`` (wait for queued work before reading a clock), ``reset_peak_memory`` / ``peak_memory_bytes``
(``None`` where the backend cannot tell), and a human-readable name.
"""

from __future__ import annotations

import functools
import platform
import re
import statistics
import subprocess
import time
from dataclasses import dataclass

import torch

from devicebench.errors import UsageError

KNOWN_DEVICES = ("cpu", "mps", "cuda")


@dataclass(frozen=True)
class DeviceStatus:
    """What probing one device type found. ``skip_reason`` says what was checked when it is unavailable."""

    type: str
    available: bool
    name: str | None = None
    skip_reason: str | None = None


def parse_choices(option: str, text: str, valid: tuple[str, ...], noun: str) -> list[str]:
    """Turn ``"cpu,cuda"`` into ``["cpu", "cuda"]`` (order kept, repeats dropped), refusing unknown names."""
    names = [part.strip().lower() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in valid]
    if unknown or not names:
        raise UsageError(
            f"--{option} {text!r}: unknown {noun} {', '.join(map(repr, unknown)) or '(empty)'}; "
            f"valid {noun}s are {', '.join(valid)} (comma-separated, e.g. --{option} {valid[0]},{valid[-1]})"
        )
    return list(dict.fromkeys(names))


def parse_device_list(text: str) -> list[str]:
    return parse_choices("device", text, KNOWN_DEVICES, "device")


def probe(device_type: str) -> DeviceStatus:
    """Check whether ``device_type`` can run here; if not, say exactly which check failed."""
    if device_type == "cpu":
        return DeviceStatus("cpu", True, name=cpu_name())
    if device_type == "cuda":
        return _probe_cuda()
    if device_type == "mps":
        return _probe_mps()
    raise UsageError(f"unknown device {device_type!r}; valid devices are {', '.join(KNOWN_DEVICES)}")


def _probe_cuda() -> DeviceStatus:
    if not torch.backends.cuda.is_built():
        return DeviceStatus(
            "cuda", False,
            skip_reason=f"cuda: this torch build has no CUDA support (torch.backends.cuda.is_built() is False; "
                        f"torch {torch.__version__})",
        )
    if not torch.cuda.is_available():
        return DeviceStatus(
            "cuda", False,
            skip_reason=f"cuda: torch {torch.__version__} is built with CUDA {torch.version.cuda} but "
                        f"torch.cuda.is_available() is False (no NVIDIA GPU or driver visible)",
        )
    name = torch.cuda.get_device_name(0)
    missing_kernels = _missing_cuda_kernels(torch.cuda.get_device_capability(0), torch.cuda.get_arch_list())
    if missing_kernels:
        return DeviceStatus("cuda", False, name=name, skip_reason=f"cuda: {name} {missing_kernels}")
    return DeviceStatus("cuda", True, name=name)


def _arch_runs_on(arch: str, capability: tuple[int, int]) -> bool:
    """Whether one ``torch.cuda.get_arch_list()`` entry can run on a GPU of ``capability``.

    - ``sm_XY`` (a cubin) runs on every GPU of the same major version with minor >= Y: sm_60 serves a GTX 1060
      (6.1), sm_86 an RTX 4090 (8.9). ``sm_XYf`` (family) follows the same rule.
    - ``sm_XYa`` (architecture-specific features, e.g. sm_90a) runs on exactly X.Y.
    - ``compute_XY`` (PTX) is compiled by the driver for any GPU of X.Y or newer.
    torch's own incompatible-device check (``torch.cuda._check_capability``) applies the same rules.
    """
    match = re.fullmatch(r"(sm|compute)_(\d+)(\d)([af]?)", arch)
    if match is None:
        return False
    kind, major, minor, suffix = match[1], int(match[2]), int(match[3]), match[4]
    if kind == "compute":
        return capability >= (major, minor)
    if suffix == "a":
        return capability == (major, minor)
    return capability[0] == major and capability[1] >= minor


def _missing_cuda_kernels(capability: tuple[int, int], arch_list: list[str]) -> str | None:
    """Say why a GPU cannot run this build's kernels, or None when it can.

    Recent torch wheels dropped older architectures (a GTX 1060 is sm_61, Pascal); the cu126 wheels still ship
    sm_60, which runs on it.
    """
    if not arch_list:  # a build that does not report its architectures: let it try
        return None
    if any(_arch_runs_on(arch, capability) for arch in arch_list):
        return None
    ours = f"{capability[0]}{capability[1]}"
    return (
        f"is sm_{ours}, but this torch build ships kernels for {', '.join(arch_list)} only "
        f"(torch.cuda.get_arch_list()), none of which runs on it; install a torch wheel built for sm_{ours} "
        f"(for Pascal GPUs such as the GTX 1060, the cu126 wheels: torch 2.14 is the last release with them)"
    )


def _probe_mps() -> DeviceStatus:
    if not torch.backends.mps.is_built():
        return DeviceStatus(
            "mps", False,
            skip_reason="mps: this torch build has no MPS support (torch.backends.mps.is_built() is False)",
        )
    if not torch.backends.mps.is_available():
        return DeviceStatus(
            "mps", False,
            skip_reason="mps: torch is built with MPS but torch.backends.mps.is_available() is False "
                        "(needs macOS 12.3+ on Apple silicon or an MPS-capable GPU)",
        )
    return DeviceStatus("mps", True, name=f"{apple_chip_name()} GPU")


def sync(device: torch.device) -> None:
    """Wait until all work queued on ``device`` has finished, so a clock read after it measures the work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
    # cpu work is synchronous: nothing to wait for


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a host tensor to ``device`` the one way that is safe on every backend (docs/mps.md lists why).

    Blocking everywhere but cuda: on mps a ``non_blocking`` copy from pageable host memory can read the source
    after it was released and silently give wrong values (pytorch/pytorch#189690, #139550), and the temporary
    tensors this is called with are released at once. Dense first: copies of non-dense views to mps have given
    wrong values (#189961). On cuda a copy from pageable memory is staged by the driver and safe without blocking.
    """
    tensor = tensor.contiguous()
    if device.type == "cuda":
        return tensor.to(device, non_blocking=True)
    return tensor.to(device)


def to_host_float32(tensor: torch.Tensor) -> torch.Tensor:
    """A device tensor as float32 on the cpu: moved first, converted there, since an mps-to-cpu copy that also
    converts the dtype has given wrong values (#189563)."""
    return tensor.detach().to("cpu").to(torch.float32)


def keep_busy(device: torch.device, seconds: float) -> None:
    """Lengthen the work on ``device`` by ``seconds`` (the planted slowdown), then wait for it.

    On cuda a sleep kernel (``torch.cuda._sleep``, which spins for a number of GPU clock cycles) on the current
    stream, so the device's own timeline holds the delay; it is sized at 90% of the target from this process's
    measured clock rate, and the host tops up what it fell short by. On the cpu and mps, whose work has
    finished when this is called (after ``sync``), the host waits: a sleep, then a spin for the last
    millisecond, because ``time.sleep`` overshoots by tens of microseconds, a visible share of a 5% change on a
    10 ms epoch.
    """
    start = time.perf_counter()
    if device.type == "cuda" and seconds > 0:
        torch.cuda._sleep(int(0.9 * seconds * _cuda_sleep_cycles_per_second()))
        sync(device)
    end = start + seconds
    remaining = end - time.perf_counter()  # read once: a second read could be later, and sleep refuses < 0
    if remaining > 1e-3:
        time.sleep(remaining - 1e-3)
    while time.perf_counter() < end:
        pass


@functools.cache
def _cuda_sleep_cycles_per_second() -> float:
    """How many ``torch.cuda._sleep`` cycles make a second on this GPU (median of three 5-million-cycle sleeps)."""
    rates = []
    for _ in range(3):
        begin, finish = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        torch.cuda._sleep(5_000_000)
        finish.record()
        finish.synchronize()
        rates.append(5_000_000 / (begin.elapsed_time(finish) / 1e3))
    return statistics.median(rates)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    elif device.type == "mps" and (memory := _accelerator_memory()) is not None:
        try:
            memory.reset_peak_memory_stats()
        except (RuntimeError, NotImplementedError):
            pass  # the peak then reads as absent (peak_memory_bytes)


def _accelerator_memory():
    """``torch.accelerator`` where this torch has its memory statistics (2.9 and later), else None."""
    accelerator = getattr(torch, "accelerator", None)
    needed = ("max_memory_allocated", "reset_peak_memory_stats")
    return accelerator if accelerator is not None and all(hasattr(accelerator, n) for n in needed) else None


def peak_memory_bytes(device: torch.device) -> int | None:
    """Peak bytes allocated by tensors since ``reset_peak_memory``; None where the backend does not track a peak.

    mps has a peak only through ``torch.accelerator``'s memory statistics (torch 2.9 and later, where its allocator
    reports them); elsewhere it reports None rather than a number that would look like a peak and not be one.
    """
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    if device.type == "mps" and (memory := _accelerator_memory()) is not None:
        try:
            peak = int(memory.max_memory_allocated())
        except (RuntimeError, NotImplementedError):
            return None
        return peak if peak > 0 else None  # a backend without statistics reads 0: absent, not zero bytes
    return None


def empty_cache(device: torch.device) -> None:
    """Give cached device memory back, so one benchmark's leftovers do not count against the next."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


# torch.OutOfMemoryError is torch 2.5's name; older releases have only torch.cuda.OutOfMemoryError (its base).
OUT_OF_MEMORY_ERRORS = tuple({getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError),
                              torch.cuda.OutOfMemoryError})


def is_out_of_memory(error: BaseException) -> bool:
    """True for the out-of-memory errors of every backend (cuda raises its own type; mps a RuntimeError)."""
    if isinstance(error, OUT_OF_MEMORY_ERRORS):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and ("out of memory" in text or "mps backend out of memory" in text)


@functools.cache
def cpu_name() -> str:
    """The CPU model, e.g. 'AMD EPYC 9454 48-Core Processor' or 'Apple M1 Pro'."""
    system = platform.system()
    if system == "Linux":
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
                for line in cpuinfo:
                    if line.lower().startswith(("model name", "hardware")):
                        return line.split(":", 1)[1].strip()
        except OSError:
            pass
    elif system == "Darwin":
        name = _sysctl("machdep.cpu.brand_string")
        if name:
            return name
    return platform.processor() or platform.machine() or "unknown CPU"


def apple_chip_name() -> str:
    """The Apple chip ('Apple M1'); the GPU is part of it, so the chip names the mps device."""
    return _sysctl("machdep.cpu.brand_string") or "Apple silicon"


def _sysctl(key: str) -> str | None:
    try:
        out = subprocess.run(["sysctl", "-n", key], capture_output=True, text=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def accelerators() -> list[dict]:
    """The accelerators torch can use here, as ``{"type", "name", "memory_bytes"}`` records."""
    found = []
    if torch.backends.cuda.is_built() and torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            found.append({"type": "cuda", "name": props.name, "memory_bytes": int(props.total_memory)})
    if torch.backends.mps.is_built() and torch.backends.mps.is_available():
        memory = None
        if hasattr(torch.mps, "recommended_max_memory"):  # the unified-memory share the GPU may use
            memory = int(torch.mps.recommended_max_memory())
        found.append({"type": "mps", "name": f"{apple_chip_name()} GPU", "memory_bytes": memory})
    return found
