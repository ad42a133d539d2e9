"""Counts that noise cannot move: what a training step asks of torch and of the device.

A time varies with the machine's minute; how many operators a step dispatches does not. PyTorch's own
compile-time CI gates on instruction counts for that reason. So every row records, from an untimed training epoch
run after its timed rounds under ``torch.profiler``, per training step:

- ``ops_per_step``: aten operators dispatched on the host (every ``aten::`` call the profiler records, nested calls
  included: a ``clone()`` is ``aten::clone`` with its ``empty_like``/``empty_strided``/``copy_`` inside);
- ``kernels_per_step``: on cuda, device kernels launched (the profiler's kernel records from CUPTI, a captured
  graph's replayed kernels included; copies and memsets are not kernels); on the cpu and mps, the aten operators
  that call no other operator (each is one kernel running), because the profiler sees no device there;
- ``syncs_per_step``: on cuda, host waits for the device (``cudaStreamSynchronize``, ``cudaDeviceSynchronize``,
  ``cudaEventSynchronize`` and blocking ``cudaMemcpy`` calls); None elsewhere (nothing to count it from);
- ``allocations_per_step``: on cuda, the caching allocator's allocation requests (``torch.cuda.memory_stats``'s
  ``allocation.all.allocated``); None on the cpu and mps, whose allocators do not report them.

Which steps. The profiler's schedule records steps 2 and 3 of the epoch (``COUNTED_STEPS``), stepped by a hook on
every ``Optimizer.step`` (Ranger21's too), and the epoch is stopped there: the epoch's start (its shuffle, the
loader starting) stays out, and counting costs three steps, not an epoch (an mnist_mlp seed epoch dispatches
130,000 operators, which the profiler takes ~15 s to hand back). The window ends with one device sync, so that every
kernel of it is recorded; that sync is not counted. A pipeline whose step is replayed from a captured graph calls
no Python step: there the whole epoch is recorded and divided by its batches.

The same code gives the same counts in every process (a test checks it), so a difference between two runs of one
row is a change in the code, shown exactly from one process a side (compare.py) and gated by ``--threshold``. The
counts are made after the row's times are recorded, so no time depends on them.
"""

from __future__ import annotations

import math

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.profiler import ProfilerActivity, profile

from devicebench import devices
from devicebench.workloads.base import Stopwatch, WorkloadRun

FIELDS = ("ops_per_step", "kernels_per_step", "syncs_per_step", "allocations_per_step")
SYNC_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy")
NOT_KERNELS = ("Memcpy", "Memset")  # CUPTI's copy and memset records, device work that is not a launched kernel


COUNTED_STEPS = 2  # after one step left out (the epoch's start)


class _Counted(Exception):
    """Raised from the step hook once the counted steps are recorded: the rest of the epoch is not needed."""


def count_step(run: WorkloadRun) -> dict:
    """Part of an untimed training epoch of ``run`` under the profiler (see above); the row's count fields."""
    device = run.device
    on_cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])
    found: dict = {}
    state = {"steps": 0, "allocated": None}

    def recorded(profiler) -> None:
        allocations = None if state["allocated"] is None else _allocations(device) - state["allocated"]
        found.update(per_step(profiler.events(), COUNTED_STEPS, on_cuda, allocations, window_syncs=1))

    def after_step(optimizer, args, kwargs) -> None:
        state["steps"] += 1
        if state["steps"] == 1:
            devices.sync(device)
            state["allocated"] = _allocations(device)
        elif state["steps"] == 1 + COUNTED_STEPS:
            devices.sync(device)  # every kernel of the window done and recorded (the one sync not counted)
        profiler.step()
        if state["steps"] == 1 + COUNTED_STEPS:
            raise _Counted

    devices.sync(device)
    schedule = torch.profiler.schedule(wait=0, warmup=1, active=COUNTED_STEPS, repeat=1)
    handle = register_optimizer_step_post_hook(after_step)
    try:
        with profile(activities=activities, schedule=schedule, on_trace_ready=recorded) as profiler:
            run.train_epoch(Stopwatch())
    except _Counted:
        pass
    finally:
        handle.remove()
    if found:
        return found
    # No Python optimizer step (a captured graph replays it): the whole epoch, divided by its batches.
    allocated = _allocations(device)
    with profile(activities=activities) as profiler:
        run.train_epoch(Stopwatch())
        devices.sync(device)
    allocations = None if allocated is None else _allocations(device) - allocated
    batches = math.ceil(run.config.scale.train_samples / run.config.scale.batch_size)
    return per_step(profiler.events(), batches, on_cuda, allocations, window_syncs=1)


def per_step(events, steps: int, on_cuda: bool, allocations: int | None, window_syncs: int = 0) -> dict:
    """The count fields from a profile's events (``torch.autograd.profiler_util.FunctionEvent``s) of ``steps``
    steps; ``window_syncs``: syncs the counting itself made, left out."""
    host = [event for event in events if event.device_type == torch.autograd.DeviceType.CPU]
    aten = [event for event in host if event.name.startswith("aten::")]
    if on_cuda:
        kernels = sum(1 for event in events if event.device_type == torch.autograd.DeviceType.CUDA
                      and not event.name.startswith(NOT_KERNELS))
        syncs = max(0, sum(1 for event in host if event.name in SYNC_CALLS) - window_syncs)
    else:
        kernels = sum(1 for event in aten if not any(child.name.startswith("aten::") for child in event.cpu_children))
        syncs = None
    return {"ops_per_step": len(aten) / steps, "kernels_per_step": kernels / steps,
            "syncs_per_step": None if syncs is None else syncs / steps,
            "allocations_per_step": None if allocations is None else allocations / steps,
            "counted_steps": steps}


def _allocations(device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    return int(torch.cuda.memory_stats(device).get("allocation.all.allocated", 0))


def changes(base: dict, new: dict) -> list[tuple[str, float, float]]:
    """(field, baseline count, new count) for every count both rows have and that differs."""
    return [(field, base[field], new[field]) for field in FIELDS
            if base.get(field) is not None and new.get(field) is not None and base[field] != new[field]]


def describe(changed: list[tuple[str, float, float]]) -> str:
    """``kernels +6 per step (+2.1%), ops +12 per step (+3.0%)``."""
    parts = []
    for field, base, new in changed:
        relative = f" ({new / base - 1:+.1%})" if base else ""
        parts.append(f"{field.removesuffix('_per_step')} {new - base:+.4g} per step{relative}")
    return ", ".join(parts)


def increases_beyond(changed: list[tuple[str, float, float]], threshold: float) -> list[tuple[str, float, float]]:
    """The counts that grew by more than ``threshold`` (a fraction); from zero, any growth."""
    return [(field, base, new) for field, base, new in changed
            if new > base and (base == 0 or new / base - 1 > threshold)]
