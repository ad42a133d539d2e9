"""The facts about this machine's software and accelerators that every result carries (``machine_info``)."""

from __future__ import annotations

import importlib.metadata

import torch

import devicebench
from devicebench import devices, host

# Fields pytest-benchmark's default machine_info has that change from run to run on one machine: keeping them
# would make every comparison of two runs on the same machine warn that the machine changed.
VOLATILE_CPU_FIELDS = ("hz_actual", "hz_actual_friendly", "hz_actual_raw")


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def software_facts() -> dict:
    """Versions and backend facts, flat, as they go into ``machine_info``."""
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "devicebench_version": devicebench.__version__,
        "torch_version": torch.__version__,
        "torch_git_version": torch.version.git_version,
        "torchvision_version": package_version("torchvision"),
        "timm_version": package_version("timm"),
        "ranger21_version": package_version("ranger21"),
        "cuda_version": torch.version.cuda,
        "cudnn_version": cudnn,
        "mps_built": torch.backends.mps.is_built(),
        "mps_available": torch.backends.mps.is_available(),
        "cpu_name": devices.cpu_name(),
        "accelerators": devices.accelerators(),
        "host_memory": host.memory_settings(),  # host-bound rows move with these (host.py)
        "machine_name": machine_name(),
    }


# Names this machine where its hostname does not (a container's changes from run to run); saved as machine_name.
MACHINE_VARIABLE = "DEVICEBENCH_MACHINE"


def machine_name() -> str:
    """What names this machine in ``machine_key``: DEVICEBENCH_MACHINE if set, else the hostname."""
    import os
    import platform

    return os.environ.get(MACHINE_VARIABLE) or platform.node()


def machine_key() -> tuple:
    """This machine as ``results.Run.machine_key`` names the machine of a saved run."""
    return (machine_name(), devices.cpu_name(), tuple(a.get("name", "?") for a in devices.accelerators()))


def machine_info() -> dict:
    """What a worker records of its machine: pytest-benchmark's machine_info fields, and ours."""
    import os
    import platform

    info = {"node": platform.node(), "processor": platform.processor(), "machine": platform.machine(),
            "python_compiler": platform.python_compiler(),
            "python_implementation": platform.python_implementation(),
            "python_implementation_version": platform.python_version(), "python_version": platform.python_version(),
            "python_build": list(platform.python_build()), "release": platform.release(),
            "system": platform.system(), "cpu": {"brand_raw": devices.cpu_name(), "count": os.cpu_count()}}
    info.update(software_facts())
    return info


def update_machine_info(machine_info: dict) -> None:
    """Add our facts to pytest-benchmark's machine_info and drop the fields that change between runs."""
    machine_info.update(software_facts())
    cpu = machine_info.get("cpu")
    if isinstance(cpu, dict):
        for field in VOLATILE_CPU_FIELDS:
            cpu.pop(field, None)


def device_table() -> list[tuple[str, str, str]]:
    """(device, status, detail) rows for ``devicebench info``: the name if usable, else the skip reason."""
    rows = []
    for name in devices.KNOWN_DEVICES:
        status = devices.probe(name)
        rows.append((name, "available" if status.available else "skipped",
                     status.name if status.available else status.skip_reason))
    return rows
