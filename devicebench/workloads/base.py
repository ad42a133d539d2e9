"""The one protocol every workload follows: ``WorkloadModule`` below, checked by ``check_workload`` when a
workload is registered (workloads/__init__.py), so a module that lacks a part fails at once, naming it.

A ``WorkloadRun`` is the workload built for one device and pipeline (model, optimizer, data); the benchmark calls
``run_round()`` once per round and ``final_evaluation()`` once at the end.

Pipelines:
- ``seed``: the blog post's code as written, plus ``.to(device)``: a CPU DataLoader, per-batch host syncs.
- ``resident``: the same math with the data already on the device, shuffled there, no per-batch host sync.
- ``tuned``: ``resident`` made fast with what the device supports (see tuning.py).
"""

from __future__ import annotations

import inspect
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Callable, Iterable, Iterator, Protocol

import torch

from devicebench import devices
from devicebench.errors import UsageError
from devicebench.scales import Scale
from devicebench.tuning import TuningOptions

PIPELINES = ("seed", "resident", "tuned")  # every pipeline any workload may offer, in display order


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
    # A planted slowdown for checking what a comparison detects: each training epoch and validation pass made this
    # fraction longer than its own length, on the device (run_round). 0: none.
    slowdown_fraction: float = 0.0
    # The core the rounds' thread is pinned to on an accelerator (affinity.py): the same for both workers of a
    # pair, so what the core is worth cancels in their ratio. None: not pinned.
    round_core: int | None = None
    # This process is one rank of a data-parallel run (distributed.py): the model it trains is wrapped in DDP.
    distributed: "DistributedRank | None" = None


@dataclass(frozen=True)
class DistributedRank:
    """Where this process stands in a data-parallel run (torchrun's RANK, LOCAL_RANK and WORLD_SIZE)."""

    rank: int
    local_rank: int
    world_size: int
    view: str  # "weak": each rank the whole scale's work; "strong": the scale's work shared out (scaling.py)


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
        self.ranks_share_gradients = False  # distributed() sets it when it wraps; run_round refuses a rank without
        # Every rank of a data-parallel run builds the same model (config.seed) but draws its own data order.
        rank = config.distributed.rank if config.distributed is not None else 0
        self.order_generator = torch.Generator().manual_seed(config.seed + rank)

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

    @property
    def precision(self) -> str:
        """The dtype the math ran in: float32 unless a tuned plan chose autocast (tuned.TunedSetup)."""
        return "float32"

    def describe(self) -> dict:
        """Fields this run adds to every result row; workloads add their options to these."""
        return {"data_source": self.data_source, "batch_size": self.config.scale.batch_size,
                "valid_batch_size": self.config.scale.valid_batch_size, "dtype": self.precision}

    # --- shared by every workload ------------------------------------------------------------------------------
    def distributed(self, module: torch.nn.Module, constant_buffers: bool = False) -> torch.nn.Module:
        """``module`` as the training step should call it: wrapped in DistributedDataParallel when this process is
        a rank of a data-parallel run (its gradients averaged over the ranks during backward), else itself. A
        workload wraps exactly the module its training step calls, once. ``constant_buffers``: its buffers never
        change (char_gpt's causal masks), so DDP need not broadcast them before every forward, as it does by
        default for buffers that train (BatchNorm statistics)."""
        if self.config.distributed is None:
            return module
        from torch.nn.parallel import DistributedDataParallel

        self.ranks_share_gradients = True
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids, broadcast_buffers=not constant_buffers)

    def shuffled_order(self, size: int) -> torch.Tensor:
        """An epoch's sample order for data held on the device.

        Drawn on the cpu from a seeded generator, so every device trains on the same order, then one small copy
        (50k int64 indices per epoch); the samples themselves are gathered on the device. The order is a temporary
        released at once: ``devices.to_device`` copies it blocking on mps, where a non-blocking copy of it could
        be read after release (#189690).
        """
        return devices.to_device(torch.randperm(size, generator=self.order_generator), self.device)

    def _planted_slowdown(self, since: float) -> None:
        """--slowdown-fraction: make the part of the round that began at ``since`` that fraction longer.

        Proportional to each part's own length (training epoch, validation pass), so the planted change is the
        same size on every row and pipeline and in every time a comparison reads (round, training, validation),
        a CUDA-graph epoch included (a host sleep inside module forwards would miss one)."""
        if self.config.slowdown_fraction > 0:
            devices.keep_busy(self.device, self.config.slowdown_fraction * (time.perf_counter() - since))

    def run_round(self) -> RoundStats:
        """One timed round: a training epoch and a validation pass, each ended by waiting for the device.

        The syncs are inside the round, so the times are the device's work, not just the time it took to queue it
        (what a cuda-only sync gets wrong on mps). The sync between the two parts lets training throughput be
        computed from training time alone; it costs one wait that the epoch's last loss read does anyway.
        """
        if self.config.distributed is not None and not self.ranks_share_gradients:
            raise UsageError(f"{type(self).__module__}.{type(self).__name__} wraps no module with "
                             f"WorkloadRun.distributed(), so its ranks would train apart: wrap the module its "
                             f"training step calls (docs/internals.md)")
        waits = Stopwatch()
        start = time.perf_counter()
        train_loss = self.train_epoch(waits)
        devices.sync(self.device)
        self._planted_slowdown(start)
        trained = time.perf_counter()
        val_loss = self.validate(waits)
        devices.sync(self.device)
        self._planted_slowdown(trained)
        end = time.perf_counter()
        return RoundStats(end - start, trained - start, end - trained, waits.seconds, float(train_loss),
                          float(val_loss))


def unwrapped(module: torch.nn.Module) -> torch.nn.Module:
    """The module a DistributedDataParallel wrapper holds (``WorkloadRun.distributed``), or ``module`` itself."""
    return getattr(module, "module", module) if type(module).__name__ == "DistributedDataParallel" else module


class WorkloadModule(Protocol):
    """What a workload module defines (docs/internals.md, "Adding a workload", walks through the steps).

    - ``NAME``: its name in results and test ids; ``VERSION``: bumped when the work a round does changes.
    - ``HAS_CONVOLUTIONS``: 2-D convolutions: channels_last applies (the tuned run converts its own inputs), and
      float32 work counts against the TF32 peak on cuda. A model of 1-D convolutions says False.
    - ``RUNS``: pipeline name -> ``WorkloadRun`` subclass: the pipelines it offers (a subset of ``PIPELINES``).
    - ``flop_counts(scale)``: FLOPs per sample at that scale (flops.py); ``parity_case()``: a few steps for the
      cpu-vs-device check.
    - ``SCALES`` (optional): scale name -> sizes, for a workload that has no entry in ``scales.toml``; a scale it
      lacks skips its rows, saying so.
    - ``REQUIRES`` (optional): packages it imports beyond torch; a row skips, saying which, where one does not
      import with this torch (rows.missing_requirement).
    """

    NAME: str
    VERSION: int
    HAS_CONVOLUTIONS: bool
    RUNS: dict[str, type[WorkloadRun]]
    flop_counts: Callable
    parity_case: Callable


CONTRACT = {"NAME": str, "VERSION": int, "HAS_CONVOLUTIONS": bool, "RUNS": dict, "flop_counts": Callable,
            "parity_case": Callable}


def check_workload(module: ModuleType) -> ModuleType:
    """Return ``module`` if it follows ``WorkloadModule``; else raise naming every part it lacks or gets wrong."""
    problems = []
    for name, kind in CONTRACT.items():
        if not hasattr(module, name):
            problems.append(f"{name} is missing")
        elif kind is Callable and not callable(getattr(module, name)):
            problems.append(f"{name} is not a function")
        elif kind is not Callable and not isinstance(getattr(module, name), kind):
            problems.append(f"{name} should be a {kind.__name__}")
    runs = getattr(module, "RUNS", None)
    if isinstance(runs, dict):
        unknown = [name for name in runs if name not in PIPELINES]
        not_runs = [name for name, cls in runs.items() if not (isinstance(cls, type) and issubclass(cls, WorkloadRun))]
        if unknown or not runs:
            problems.append(f"RUNS names pipelines {unknown or '(none)'}; pipelines are {', '.join(PIPELINES)}")
        if not_runs:
            problems.append(f"RUNS[{', '.join(not_runs)}] is not a WorkloadRun subclass")
    if callable(getattr(module, "flop_counts", None)) and not _takes_one_argument(module.flop_counts):
        problems.append("flop_counts must take the scale (flop_counts(scale); ignore it if the FLOPs do not "
                        "change with it)")
    if problems:
        raise UsageError(f"workload module {module.__name__} does not follow the workload contract "
                         f"(devicebench/workloads/base.py, WorkloadModule): {'; '.join(problems)}")
    return module


def _takes_one_argument(function: Callable) -> bool:
    try:
        inspect.signature(function).bind(None)
    except TypeError:
        return False
    except ValueError:  # no signature to read (a builtin): leave it to the call
        pass
    return True


def pipelines(workload: WorkloadModule) -> tuple[str, ...]:
    """The pipelines ``workload`` offers, in display order."""
    return tuple(name for name in PIPELINES if name in workload.RUNS)


def build(workload: WorkloadModule, config: RunConfig) -> WorkloadRun:
    """Build ``workload`` for one device and pipeline."""
    if config.pipeline not in workload.RUNS:
        raise UsageError(f"{workload.NAME} has no pipeline {config.pipeline!r}; it has "
                         f"{', '.join(pipelines(workload))}")
    return workload.RUNS[config.pipeline](config)
