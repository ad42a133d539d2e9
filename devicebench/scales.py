"""Scale profiles (``--scale quick|standard|full``): how much work a round is and how many rounds to time."""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Callable

from devicebench.errors import UsageError
from devicebench.tables import load_table

SCALES = ("quick", "standard", "full", "gpt2")  # gpt2: char_gpt's GPT-2 124M, on accelerators
DEFAULT_SCALE = "standard"

# How scale_for finds the module of a workload that scales.toml does not list (its module carries a SCALES table):
# devicebench/workloads/__init__.py sets it to its get_workload. Workloads import this module, never the reverse.
find_workload: Callable[[str], ModuleType] | None = None


@dataclass(frozen=True)
class Scale:
    name: str
    train_samples: int
    valid_samples: int
    batch_size: int
    valid_batch_size: int
    warmup_rounds: int
    rounds: int
    # A model's sizes where the scale sets them (char_gpt: layers, heads, width, context), as sorted pairs.
    model: tuple[tuple[str, int | float], ...] = ()
    needs_accelerator: bool = False  # too large for a cpu: rows on the cpu skip, saying so


class ScaleNotOffered(UsageError):
    """The workload has no sizes for this scale: its rows skip, naming the scales it has."""


def scale_for(workload: str, name: str, module: ModuleType | None = None) -> Scale:
    """``workload``'s sizes at scale ``name``: its entry in scales.toml, else its module's ``SCALES`` (a workload
    registered from outside: base.WorkloadModule). ``module``: that module, where the caller holds it; else it is
    found by name."""
    if name not in SCALES:
        raise UsageError(f"--scale {name!r}: choose one of {', '.join(SCALES)}")
    profiles = load_table("scales").get(workload)
    if profiles is None:
        if module is None and find_workload is not None:
            module = find_workload(workload)
        profiles = getattr(module, "SCALES", None)
        if profiles is None:
            raise UsageError(f"workload {workload!r} has no scales: add them to devicebench/scales.toml or give "
                             f"its module a SCALES table")
    if name not in profiles:
        raise ScaleNotOffered(f"{workload} has no {name} scale (it has {', '.join(profiles)})")
    entry = dict(profiles[name])
    entry.setdefault("valid_batch_size", entry["batch_size"])
    entry["model"] = tuple(sorted(entry.get("model", {}).items()))
    return Scale(name=name, **entry)
