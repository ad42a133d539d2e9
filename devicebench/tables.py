"""The package's plain-data tables (``*.toml`` beside this file): scales, device peaks, torch/torchvision pairs."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


@functools.cache
def load_table(name: str) -> dict:
    """``load_table("scales")`` reads ``devicebench/scales.toml`` (once per process)."""
    with open(Path(__file__).with_name(f"{name}.toml"), "rb") as file:
        return tomllib.load(file)
