"""Data sets the workloads train on: download, verification, safe reading, and synthetic stand-ins.

Every data set offers the same three modes (``--data``): ``real`` (download or use the verified cached copy,
fail clearly otherwise), ``synthetic`` (deterministic data of identical shapes and dtypes, generated here), and
``auto`` (real when it can be had, else synthetic with a one-line notice). Which one was used is recorded in every
result as ``data_source``.
"""

from __future__ import annotations

import functools
import os
import platform
import sys
from pathlib import Path
from typing import Callable, TypeVar

from devicebench.errors import DataError, UsageError

DATA_MODES = ("auto", "real", "synthetic")
DATA_DIR_ENV = "DEVICEBENCH_DATA_DIR"

T = TypeVar("T")


def default_data_dir() -> Path:
    """``$DEVICEBENCH_DATA_DIR``, else the user's cache directory (``~/.cache/devicebench`` on Linux)."""
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV]).expanduser()
    if platform.system() == "Darwin":
        return Path.home() / "Library" / "Caches" / "devicebench"
    if platform.system() == "Windows":
        return Path(os.environ.get("LOCALAPPDATA", Path.home())) / "devicebench" / "Cache"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "devicebench"


def check_data_mode(mode: str) -> str:
    if mode not in DATA_MODES:
        raise UsageError(f"--data {mode!r}: choose one of {', '.join(DATA_MODES)}")
    return mode


def resolve(mode: str, name: str, load_real: Callable[[int], T], make_synthetic: Callable[[], T]) -> tuple[T, str]:
    """Load ``name`` according to ``mode``; return (data, source) with source ``"real"`` or ``"synthetic"``.

    ``load_real(attempts)`` fetches with that many download attempts: ``auto`` tries once, so an offline machine
    falls back at once instead of retrying a network that is not there.
    """
    check_data_mode(mode)
    if mode == "synthetic":
        return make_synthetic(), "synthetic"
    if mode == "real":
        return load_real(3), "real"
    try:
        return load_real(1), "real"
    except DataError as error:
        print(f"devicebench: {name}: real data unavailable, using synthetic data of the same shapes "
              f"(--data real to insist): {error}", file=sys.stderr)
        return make_synthetic(), "synthetic"


def cached_loader(name: str, load_real: Callable[[Path, int, object], T], make_synthetic: Callable[[], T]
                  ) -> Callable[[str, Path, object], tuple[T, str]]:
    """A data set's ``load(mode, data_dir, remote)``: ``resolve`` over ``load_real(data_dir, attempts, remote)`` and
    ``make_synthetic()``, each kept for the process (a worker builds many rows from one data set). The loader's
    ``cache_clear()`` forgets the real data (tests)."""
    real = functools.lru_cache(maxsize=2)(load_real)
    synthetic = functools.lru_cache(maxsize=1)(make_synthetic)

    def load(mode: str, data_dir: Path, remote: object) -> tuple[T, str]:
        return resolve(mode, name, lambda attempts: real(Path(data_dir), attempts, remote), synthetic)

    load.cache_clear = real.cache_clear  # type: ignore[attr-defined]
    return load
