"""Scale profiles (``--scale quick|standard|full``): how much work a round is and how many rounds to time."""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from devicebench.errors import UsageError

SCALES = ("quick", "standard", "full")
DEFAULT_SCALE = "standard"
_PROFILES = Path(__file__).with_name("scales.toml")


@dataclass(frozen=True)
class Scale:
    name: str
    train_samples: int
    valid_samples: int
    batch_size: int
    valid_batch_size: int
    warmup_rounds: int
    rounds: int


@functools.cache
def _table() -> dict:
    with open(_PROFILES, "rb") as file:
        return tomllib.load(file)


def scale_for(workload: str, name: str) -> Scale:
    if name not in SCALES:
        raise UsageError(f"--scale {name!r}: choose one of {', '.join(SCALES)}")
    entry = dict(_table()[workload][name])
    entry.setdefault("valid_batch_size", entry["batch_size"])
    return Scale(name=name, **entry)
