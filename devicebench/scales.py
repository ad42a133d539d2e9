"""Scale profiles (``--scale quick|standard|full``): how much work a round is and how many rounds to time."""

from __future__ import annotations

from dataclasses import dataclass

from devicebench.errors import UsageError
from devicebench.tables import load_table

SCALES = ("quick", "standard", "full")
DEFAULT_SCALE = "standard"


@dataclass(frozen=True)
class Scale:
    name: str
    train_samples: int
    valid_samples: int
    batch_size: int
    valid_batch_size: int
    warmup_rounds: int
    rounds: int


def scale_for(workload: str, name: str) -> Scale:
    if name not in SCALES:
        raise UsageError(f"--scale {name!r}: choose one of {', '.join(SCALES)}")
    profiles = load_table("scales").get(workload)
    if profiles is None:  # a workload registered from outside: its module carries its scales (base.WorkloadModule)
        from devicebench.workloads import get_workload

        profiles = getattr(get_workload(workload), "SCALES", None)
        if profiles is None:
            raise UsageError(f"workload {workload!r} has no scales: add them to devicebench/scales.toml or give "
                             f"its module a SCALES table")
    entry = dict(profiles[name])
    entry.setdefault("valid_batch_size", entry["batch_size"])
    return Scale(name=name, **entry)
