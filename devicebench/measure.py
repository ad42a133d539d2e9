"""One row measured: build a workload for a device and pipeline, time its rounds, describe them as the row's fields.

Both fronts call ``measure_row``: the pytest front hands it pytest-benchmark's ``pedantic`` as ``time_rounds`` (no
calibration, so a slow epoch is not called seven extra times), a worker of ``devicebench run`` a plain loop. The
scale's warm-up rounds (first-call allocation, cudnn autotuning, compilation) run before and are not counted. A
worker may time more rounds than the scale's, as its coordinator decides (interleave.Scheduler).
"""

from __future__ import annotations

import gc
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Callable

import torch

from devicebench import affinity, counts, devices, efficiency, fallback, host, profiling, schema, stability
from devicebench.errors import DevicebenchError, DeviceOutOfMemory
from devicebench.tuning import apply_backend_flags
from devicebench.turns import TurnPipe
from devicebench.workloads.base import RoundStats, RunConfig, WorkloadRun, build

# Called after every round: (round number from 1, total rounds incl. warm-up, warm-up rounds, stats, samples).
ProgressCallback = Callable[[int, int, int, RoundStats, int], None]
# time_rounds(one_round, rounds, before_round): calls before_round (untimed, may be None) and one_round, rounds times.
RoundTimer = Callable[[Callable[[], None], int, "Callable[[], None] | None"], None]


def plain_loop(one_round: Callable[[], None], rounds: int, before_round: Callable[[], None] | None) -> None:
    """A worker's round timer: each round times itself (RoundStats), so nothing more is needed around it."""
    for _ in range(rounds):
        if before_round is not None:
            before_round()
        one_round()


def measure_row(workload: ModuleType, config: RunConfig, device_name: str, time_rounds: RoundTimer = plain_loop,
                progress: ProgressCallback | None = None, profile_trace: Path | None = None,
                turns: TurnPipe | None = None, checks: dict | None = None, count_steps: bool = True,
                after_rounds: Callable[[WorkloadRun], dict] | None = None) -> dict:
    """Build ``workload`` for ``config``, time its rounds, and return the row's fields (schema.py).

    With ``profile_trace``, one more round runs under torch.profiler after everything is recorded (profiling.py).
    With ``turns`` (this process is a worker of ``devicebench run --env ...``), every round, warm-up included,
    waits for its turn first (untimed); the timed rounds' turn numbers go into the row.
    ``checks``: fields of checks made before the row (the parity check's), saved with it. ``count_steps``: one
    untimed epoch after the timed rounds counts what a step dispatches (counts.py). ``after_rounds``: called with
    the built run after its final evaluation; the fields it returns go into the row (distributed.py's
    communication share).
    """
    scale, device = config.scale, config.device
    apply_backend_flags(None)  # torch's defaults; a tuned run sets its plan's flags when it is built
    devices.empty_cache(device)
    try:
        with fallback.watch(device) as cpu_fallback_ops:
            timing = _time_rounds(workload, config, device_name, time_rounds, progress, profile_trace, turns,
                                  count_steps, after_rounds)
    except Exception as error:
        if devices.is_out_of_memory(error):
            devices.empty_cache(device)
            raise DeviceOutOfMemory(
                f"{device.type} ran out of memory running {workload.NAME} [{config.pipeline}] at scale "
                f"{scale.name} (batch {scale.batch_size}): close other programs using the device, or use a "
                f"smaller --scale. ({str(error).splitlines()[0]})"
            ) from error
        raise
    run, done, val_loss, val_accuracy = timing.run, timing.rounds, timing.val_loss, timing.val_accuracy
    if not math.isfinite(val_loss):
        raise DevicebenchError(
            f"{workload.NAME} [{config.pipeline}] on {device.type} ({device_name}) ended with a validation loss of "
            f"{val_loss}: the device computed wrong values, so its time is not a result. Check it with `pytest "
            f"benchmarks -k parity --device {device.type}`; on mps, try another torch release (docs/mps.md)")
    flags = backend_flags()
    timed = done[scale.warmup_rounds:]
    process = {**describe_rounds(timed, run.samples_per_round), **timing.host_fields}
    extra = _what_the_row_is(workload, config, device_name, run)
    extra.update({
        "samples_per_s": process["samples_per_s"],
        "loader_wait_fraction": process["loader_wait_fraction"],
        "warmup_rounds": scale.warmup_rounds,
        "compile_cache": config.compile_cache,
        "planted_slowdown_fraction": config.slowdown_fraction,
        "val_loss": val_loss,
        "val_accuracy": val_accuracy,
        "peak_memory_bytes": devices.peak_memory_bytes(device),
        **flags,
    })
    extra.update(schema.derived_speeds(extra))
    flops = _flop_counts(workload, scale)
    extra["flops_per_sample"] = flops.train_per_sample
    extra["flops_per_round"] = flops.per_round(scale.train_samples, scale.valid_samples)
    peak_dtype = efficiency.compute_dtype(run.precision, device.type, workload.HAS_CONVOLUTIONS,
                                          flags["cudnn_allow_tf32"], flags["matmul_allow_tf32"])
    extra.update(efficiency.efficiency_fields(extra["flops_per_round"], statistics.median(process["round_seconds"]),
                                              device_name, peak_dtype))
    extra.update(timing.step_counts)
    extra.update(timing.after_rounds)
    if timing.profile is not None:
        extra["profile"] = timing.profile
    if turns is not None:
        process["round_sequence"] = timing.turns[scale.warmup_rounds:]
    if device.type == "mps":
        extra["mps_fallback_enabled"] = fallback.fallback_enabled()
        extra["cpu_fallback_ops"] = cpu_fallback_ops
    extra.update(checks or {})
    reason = stability.assess(process["round_seconds"])
    extra["unstable"], extra["unstable_reason"] = reason is not None, reason
    process["unstable_reason"] = reason
    process["compile_s"] = extra.get("compile_s")
    extra["processes"] = [process]
    schema.check_row(extra)
    return extra


def parity_fields(workload: ModuleType, device: torch.device) -> dict:
    """Check that ``device`` trains ``workload`` as the cpu does (parity.py): the fields every row of that device
    and workload then carries. A device that is fast but wrong is marked, and compare never ranks it."""
    from devicebench import parity

    report = parity.check(workload.parity_case, device)
    fields = {"parity_failed": not report.ok, "parity_max_param_rel_diff": report.max_param_rel_diff}
    if not report.ok:
        fields["parity_mismatches"] = report.mismatches[:5]
    return fields


def trace_path(folder: str | Path, row_name: str) -> Path:
    """Where --profile writes a row's trace."""
    safe_name = "".join(char if char.isalnum() or char in "-_." else "-" for char in row_name).strip("-")
    return Path(folder) / f"{safe_name}.trace.json.gz"


def smoke_round(workload: ModuleType, config: RunConfig) -> dict:
    """pytest-benchmark's --benchmark-disable ("run the benchmarks as plain tests"): one untimed round, to show
    that the row builds and trains; nothing is saved."""
    stats = build(workload, config).run_round()
    return {"smoke_run": True, "train_loss": stats.train_loss, "val_loss": stats.val_loss}


def _what_the_row_is(workload: ModuleType, config: RunConfig, device_name: str, run: WorkloadRun) -> dict:
    """The row's fields known once it is built, before any round: its identity's among them (schema.py)."""
    return {"workload": workload.NAME, "workload_version": workload.VERSION, "device": config.device.type,
            "device_name": device_name, "pipeline": config.pipeline, "scale": config.scale.name,
            "samples_per_round": run.samples_per_round, "valid_samples": config.scale.valid_samples,
            "round_core": affinity.core_for_rounds(config.device.type, config.round_core), **run.describe()}


def calibration_key(workload: ModuleType, config: RunConfig, device_name: str, run: WorkloadRun) -> dict:
    """The row as a calibration names it (calibration.py: machine, torch version, identity), for a worker to tell
    the coordinator of an interleaved run, which sizes the row's rounds from its calibrated noise."""
    from devicebench import environment, host, noise, results

    node, cpu, accelerators = environment.machine_key()
    identity = results.Row("", _what_the_row_is(workload, config, device_name, run)).identity.fields()
    return {"machine": [node, cpu, list(accelerators)], "torch_version": torch.__version__,
            "identity": json.loads(json.dumps(identity)),
            "compiled_code": noise.compiled_code_of(identity, config.compile_cache),
            "host_memory": host.memory_settings()}


@dataclass
class _Timed:
    run: WorkloadRun
    rounds: list[RoundStats]  # warm-up rounds first
    turns: list[int]  # each round's turn number in an interleaved run (empty otherwise)
    val_loss: float
    val_accuracy: float
    profile: dict | None
    step_counts: dict  # counts.py's fields; {} when not counted
    after_rounds: dict  # the fields measure_row's after_rounds returned
    host_fields: dict  # host.process_fields of the timed rounds


def _time_rounds(workload: ModuleType, config: RunConfig, device_name: str, time_rounds: RoundTimer,
                 progress: ProgressCallback | None, profile_trace: Path | None, turns: TurnPipe | None,
                 count_steps: bool, after_rounds: Callable[[WorkloadRun], dict] | None = None) -> _Timed:
    """Build the row and time its rounds."""
    scale = config.scale
    run = build(workload, config)
    devices.reset_peak_memory(config.device)
    done: list[RoundStats] = []
    host_rounds: list[host.Usage | None] = []  # what the host did to each round (host.py)
    turn_numbers: list[int] = []
    planned = {"rounds": scale.rounds}
    held_turn: list[int] = []  # the first timed round's turn, taken when the rounds were sized

    def wait_for_turn() -> None:  # called before every round, outside its clock
        turn_numbers.append(held_turn.pop() if held_turn else turns.before_round())

    def one_round() -> None:
        before = host.usage()
        stats = run.run_round()
        host_rounds.append(host.round_counts(before, host.usage()))
        done.append(stats)
        if progress is not None:
            progress(len(done), scale.warmup_rounds + planned["rounds"], scale.warmup_rounds, stats,
                     run.samples_per_round)

    # Python's periodic full collection walks every object torch, timm and the data put on the heap (~0.2 s)
    # and lands in whichever round crosses its threshold (seen: the same round of every quick seed run, 1.8x
    # the median). Freezing what exists before timing takes it out of those walks; the rounds' own garbage is
    # still collected as usual. (A gc.collect() before every round was tried: it slowed rounds by evicting
    # caches.)
    gc.collect()
    gc.freeze()
    # An accelerator row's rounds run with this thread on the pair's core (affinity.py); a cpu row's never.
    core = affinity.core_for_rounds(config.device.type, config.round_core)
    if core is not None:
        affinity.start_thread_pool()
    try:
        with affinity.main_thread_on(core):
            # Warm-up rounds (first-call allocation, cudnn autotuning, kernel compilation) run here rather than
            # in pedantic, so that a worker of an interleaved run can learn how many rounds to time from them.
            for _ in range(scale.warmup_rounds):
                if turns is not None:
                    wait_for_turn()
                one_round()
            if turns is not None:
                last_warmup = done[-1].seconds if done else None
                turn, planned["rounds"] = turns.first_timed_round(
                    scale.rounds, last_warmup, calibration_key(workload, config, device_name, run))
                held_turn.append(turn)
            ticks = host.cpu_ticks()
            time_rounds(one_round, planned["rounds"], wait_for_turn if turns is not None else None)
            host_fields = host.process_fields(host_rounds[scale.warmup_rounds:], ticks, host.cpu_ticks())
    finally:
        gc.unfreeze()
    val_loss, val_accuracy = run.final_evaluation()
    added = after_rounds(run) if after_rounds is not None else {}
    step_counts = counts.count_step(run) if count_steps else {}
    profile = profiling.profile_round(run, profile_trace) if profile_trace is not None else None
    return _Timed(run, done, turn_numbers, val_loss, val_accuracy, profile, step_counts, added, host_fields)


_FLOP_COUNTS: dict = {}


def _flop_counts(workload: ModuleType, scale):
    """Counted once per workload, scale and process (a forward and backward on the cpu, or a formula)."""
    key = (workload.NAME, scale.name)
    if key not in _FLOP_COUNTS:
        _FLOP_COUNTS[key] = workload.flop_counts(scale)
    return _FLOP_COUNTS[key]


def backend_flags() -> dict:
    """The backend flags that change speed, as they were while the rounds ran (recorded with every row).

    TF32 stays at torch's defaults (cuDNN convolutions may use it, matmuls may not); cuDNN autotuning is set by the
    pipeline (tuning.apply_backend_flags: on only where the tuned plan uses it).
    """
    return {
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }


def describe_rounds(rounds: list[RoundStats], samples_per_round: int) -> dict:
    """One process's entry of a row (``processes``): its timed rounds, kept raw for significance tests.

    ``samples_per_s`` is training throughput: training samples over the median training-epoch time (validation
    is timed apart, in ``val_seconds``). ``round_seconds`` is the whole round, what pytest-benchmark's table shows.
    """
    seconds = [r.seconds for r in rounds]
    train_seconds = [r.train_seconds for r in rounds]
    return {
        "samples_per_s": samples_per_round / statistics.median(train_seconds),
        "round_seconds": seconds,
        "train_seconds": train_seconds,
        "val_seconds": [r.val_seconds for r in rounds],
        "loader_wait_fraction": sum(r.loader_wait_seconds for r in rounds) / sum(seconds),
        "loader_wait_fraction_per_round": [r.loader_wait_fraction for r in rounds],
        "train_loss_per_round": [r.train_loss for r in rounds],
        "val_loss_per_round": [r.val_loss for r in rounds],
    }
