"""The one protocol every workload follows.

A workload module defines ``NAME``, ``VERSION``, ``PIPELINES`` and ``build(config) -> WorkloadRun``. A
``WorkloadRun`` is the workload built for one device and pipeline (model, optimizer, data); the benchmark calls
``run_round()`` once per round and ``final_evaluation()`` once at the end. A third workload is one new module
registered in ``devicebench/workloads/__init__.py``.

Pipelines:
- ``seed``: the blog post's code as written, plus ``.to(device)``: a CPU DataLoader, per-batch host syncs.
- ``resident``: the same math with the data already on the device, shuffled there, no per-batch host sync.
- ``tuned``: ``resident`` made fast with what the device supports (see tuning.py).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import torch

from devicebench import devices
from devicebench.errors import UsageError
from devicebench.scales import Scale
from devicebench.tuning import TuningOptions

PIPELINES = ("seed", "resident", "tuned")


@dataclass(frozen=True)
class RunConfig:
    """Everything a workload needs to build itself; the pytest options map onto these fields."""

    device: torch.device
    pipeline: str
    scale: Scale
    data_mode: str = "auto"
    data_dir: Path = Path(".")
    workers: int = 0
    optimizer: str = "ranger21"
    pretrained: str = "auto"
    weights_file: Path | None = None
    tuning: TuningOptions = field(default_factory=TuningOptions)
    seed: int = 0
    compile_cache: str = "shared"  # "fresh": this process compiles from an empty torch.compile cache (plugin.py)


@dataclass
class RoundStats:
    """What one timed round did. Times run from the start until the device has finished that part's work."""

    seconds: float  # the whole round: training epoch + validation pass (pytest-benchmark's round time)
    train_seconds: float  # the training epoch alone: training throughput is computed from this
    val_seconds: float  # the validation pass alone
    loader_wait_seconds: float  # blocked waiting for the next batch, in training and validation
    train_loss: float
    val_loss: float

    @property
    def loader_wait_fraction(self) -> float:
        return self.loader_wait_seconds / self.seconds if self.seconds > 0 else 0.0


class Stopwatch:
    """Adds up the time spent blocked waiting for the next batch."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def iterate(self, iterable: Iterable) -> Iterator:
        # iter() is timed too: a DataLoader starts its worker processes there, and the epoch waits for them.
        start = time.perf_counter()
        iterator = iter(iterable)
        self.seconds += time.perf_counter() - start
        while True:
            start = time.perf_counter()
            try:
                item = next(iterator)
            except StopIteration:
                self.seconds += time.perf_counter() - start
                return
            self.seconds += time.perf_counter() - start
            yield item


class WorkloadRun(ABC):
    """One workload built for one device and pipeline."""

    def __init__(self, config: RunConfig):
        self.config = config
        self.device = config.device
        self.data_source = "unknown"  # "real" or "synthetic", set by the workload when it loads its data
        self.order_generator = torch.Generator().manual_seed(config.seed)

    # --- what each workload provides ---------------------------------------------------------------------------
    @property
    @abstractmethod
    def samples_per_round(self) -> int:
        """Training samples processed in one round (validation samples are extra work, not counted)."""

    @abstractmethod
    def train_epoch(self, waits: Stopwatch) -> float | torch.Tensor:
        """One training epoch; return the mean training loss (a device tensor is fine: read after the sync)."""

    @abstractmethod
    def validate(self, waits: Stopwatch) -> float | torch.Tensor:
        """One validation pass as the pipeline does it; return the validation loss."""

    @abstractmethod
    def final_evaluation(self) -> tuple[float, float]:
        """Untimed (val_loss, val_accuracy) of the current model on the validation split."""

    def describe(self) -> dict:
        """Fields this run adds to every result row; workloads add their options to these."""
        return {"data_source": self.data_source, "batch_size": self.config.scale.batch_size,
                "valid_batch_size": self.config.scale.valid_batch_size}

    # --- shared by every workload ------------------------------------------------------------------------------
    def shuffled_order(self, size: int) -> torch.Tensor:
        """An epoch's sample order for data held on the device.

        Drawn on the cpu from a seeded generator, so every device trains on the same order, then one small copy
        (50k int64 indices per epoch); the samples themselves are gathered on the device.
        """
        return torch.randperm(size, generator=self.order_generator).to(self.device, non_blocking=True)

    def run_round(self) -> RoundStats:
        """One timed round: a training epoch and a validation pass, each ended by waiting for the device.

        The syncs are inside the round, so the times are the device's work, not just the time it took to queue it
        (what a cuda-only sync gets wrong on mps). The sync between the two parts lets training throughput be
        computed from training time alone; it costs one wait that the epoch's last loss read does anyway.
        """
        waits = Stopwatch()
        start = time.perf_counter()
        train_loss = self.train_epoch(waits)
        devices.sync(self.device)
        trained = time.perf_counter()
        val_loss = self.validate(waits)
        devices.sync(self.device)
        end = time.perf_counter()
        return RoundStats(end - start, trained - start, end - trained, waits.seconds, float(train_loss),
                          float(val_loss))


def build_run(workload: str, runs: dict[str, type[WorkloadRun]], config: RunConfig) -> WorkloadRun:
    """Build the run class of ``config.pipeline`` from a workload's pipeline table."""
    if config.pipeline not in runs:
        raise UsageError(f"{workload} has no pipeline {config.pipeline!r}; it has {', '.join(runs)}")
    return runs[config.pipeline](config)
