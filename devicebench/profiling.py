"""Where a round's time goes: one extra, untimed round under ``torch.profiler``, broken down by kind.

``--profile`` runs it after a row's timed rounds and its final evaluation (so no recorded figure changes), writes
the trace (open it in https://ui.perfetto.dev or chrome://tracing) and records in the row::

    profile = {"basis": ..., "round_seconds": ..., "traced_seconds": ..., "seconds": {kind: seconds},
               "host_gaps_in_optimizer_step": ..., "trace": "path of the .trace.json.gz"}

The round's wall time is cut into consecutive pieces and each piece goes to exactly one kind, so the kinds add up
to the round (the profiler's clock; ``round_seconds`` is the same round timed by perf_counter, the check):

- ``matmul_conv``: matrix products and convolutions (cuBLAS/cuDNN/CUTLASS kernels, inductor's matmul templates;
  aten mm/addmm/convolution on the cpu);
- ``norm_elementwise``: every other compute kernel: normalisation, activations, losses, reductions, inductor's
  fused kernels;
- ``optimizer``: work inside ``Optimizer.step`` (torch marks every optimizer's step, Ranger21's included), or
  kernels named as an optimizer's (fused Adam inside a CUDA graph, where no host range exists);
- ``data_movement``: copies, gathers, memsets and DataLoader iteration;
- ``compilation``: torch.compile at work (dynamo / inductor) while nothing else runs; zero in a warm round;
- ``host_gaps``: nothing of the above running: on cuda the GPU idles while the host runs Python, launches or
  waits; on cpu and mps, host time outside any torch op (Python, framework overhead).

Basis: on cuda the pieces are cut on the GPU's timeline (its kernels); on cpu on the main thread's ops. torch's
profiler does not see inside the mps device, so there the basis is the host's ops too (device work shows up as
time waiting in the round's final sync, i.e. ``host_gaps``): said in the row.
"""

from __future__ import annotations

import bisect
import gzip
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from torch.profiler import ProfilerActivity, profile, record_function

from devicebench import devices, schema

KINDS = schema.PROFILE_KINDS
ROUND_RANGE = "devicebench.round"

# Kernel and op names -> kind, first match wins (lower-case substrings). The order matters: cuDNN's BatchNorm
# kernels are named cudnn::bn_..., and an inductor template for a convolution may carry a fused norm's name.
_NAME_RULES = (
    ("optimizer", ("adam", "multi_tensor_apply", "optimizer")),  # fused/foreach optimizer kernels
    ("matmul_conv", ("triton_tem", "gemm", "xmma", "nvjet", "cutlass", "cublas")),
    ("norm_elementwise", ("bn_", "batch_norm", "batchnorm", "layer_norm", "welford")),
    ("matmul_conv", ("conv", "cudnn", "wgrad", "dgrad", "aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm",
                     "mkldnn")),
    ("data_movement", ("memcpy", "memset", "copy_", "aten::_to_copy", "aten::index", "aten::gather", "aten::cat",
                       "aten::clone", "indexselect", "index_select", "index_elementwise", "gather", "catarray",
                       "dataloader")),
)
_OPTIMIZER_RANGE = "optimizer.step"
_COMPILE_RANGES = ("(dynamo_timed)", "entire_frame_compile", "inductor_compile", "backend_compile")


@dataclass(frozen=True)
class Span:
    start: float  # microseconds, the profiler's clock
    end: float
    kind: str


def classify(name: str) -> str:
    """The kind of one kernel or op, from its name (every other compute kernel is ``norm_elementwise``)."""
    lowered = name.lower()
    for kind, marks in _NAME_RULES:
        if any(mark in lowered for mark in marks) and not (kind == "optimizer" and lowered.startswith("aten::")):
            return kind
    return "norm_elementwise"


def _is_compile_range(name: str) -> bool:
    return any(mark in name for mark in _COMPILE_RANGES)


def _union(ranges) -> list[tuple[float, float]]:
    """Nested or overlapping (start, end) ranges merged into sorted, disjoint ones."""
    merged: list[tuple[float, float]] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _covering(merged: list[tuple[float, float]], point: float) -> bool:
    """Whether disjoint, sorted ``merged`` ranges (``_union``) cover ``point``."""
    index = bisect.bisect_right(merged, (point, float("inf"))) - 1
    return index >= 0 and merged[index][0] <= point < merged[index][1]


def _flatten(window: tuple[float, float], spans: list[Span], idle_kind, idle_ranges) -> dict[str, float]:
    """Cut ``window`` into pieces at every boundary of ``spans`` and ``idle_ranges``; each piece goes to the
    innermost span covering it (the one that started last), or, when none does, to ``idle_kind(midpoint)``, whose
    answer changes only at the boundaries of ``idle_ranges``. Seconds per kind (and per idle label)."""
    start, end = window
    seconds: dict[str, float] = dict.fromkeys(KINDS, 0.0)
    clipped = [Span(max(s.start, start), min(s.end, end), s.kind) for s in spans if s.end > start and s.start < end]
    inner_bounds = [bound for bounds in idle_ranges for bound in bounds if start < bound < end]
    cuts = sorted({start, end, *inner_bounds, *(s.start for s in clipped), *(s.end for s in clipped)})
    by_start = sorted(clipped, key=lambda s: s.start)
    active: list[Span] = []
    next_span = 0
    for left, right in zip(cuts, cuts[1:]):
        while next_span < len(by_start) and by_start[next_span].start <= left:
            active.append(by_start[next_span])
            next_span += 1
        active = [s for s in active if s.end > left]
        kind = active[-1].kind if active else idle_kind((left + right) / 2)
        seconds[kind] = seconds.get(kind, 0.0) + (right - left) / 1e6
    return seconds


def breakdown(trace_events: list[dict], device_timeline: bool) -> tuple[float, dict[str, float], float]:
    """From a chrome trace of one profiled round: (its duration, seconds per kind, seconds of ``host_gaps`` while
    the host was inside an optimizer step: on cuda, the device waiting on the optimizer's Python and host reads)."""
    complete = [e for e in trace_events if e.get("ph") == "X" and "dur" in e]
    rounds = [e for e in complete if e["name"] == ROUND_RANGE]
    if not rounds:
        raise ValueError(f"the trace has no {ROUND_RANGE!r} range: it is not a devicebench profile")
    round_event = rounds[0]
    window = (round_event["ts"], round_event["ts"] + round_event["dur"])
    host = [e for e in complete if e is not round_event and e.get("tid") == round_event.get("tid")
            and e.get("pid") == round_event.get("pid")]
    compiling = _union((e["ts"], e["ts"] + e["dur"]) for e in host if _is_compile_range(e["name"]))
    stepping = _union((e["ts"], e["ts"] + e["dur"]) for e in host if e["name"].lower().startswith(_OPTIMIZER_RANGE))

    def idle(point: float) -> str:
        if _covering(compiling, point):
            return "compilation"
        return "gaps in optimizer step" if _covering(stepping, point) else "host_gaps"

    if device_timeline:
        launches = {e["args"]["correlation"]: e["ts"] for e in complete
                    if e.get("cat") == "cuda_runtime" and "correlation" in e.get("args", {})}
        spans = []
        for event in complete:
            if event.get("cat") not in ("kernel", "gpu_memcpy", "gpu_memset"):
                continue
            launched = launches.get(event.get("args", {}).get("correlation"))
            in_step = launched is not None and _covering(stepping, launched)
            spans.append(Span(event["ts"], event["ts"] + event["dur"],
                              "optimizer" if in_step else classify(event["name"])))
        # Overlapping kernels (other streams): the one that started last takes the overlap; rare here.
    else:
        # An optimizer step, a compilation or a DataLoader batch owns all the time inside it; elsewhere each op
        # that does work is its own kind, and framework wrappers (compiled-region and autograd bookkeeping) are
        # host time.
        owners = [Span(start, end, "optimizer") for start, end in stepping]
        owners += [Span(start, end, "compilation") for start, end in compiling]
        owners += [Span(e["ts"], e["ts"] + e["dur"], "data_movement") for e in host
                   if e.get("cat") == "user_annotation" and "dataloader" in e["name"].lower()]
        owned = _union((span.start, span.end) for span in owners)
        spans = owners + [Span(e["ts"], e["ts"] + e["dur"], classify(e["name"])) for e in host
                          if e.get("cat") == "cpu_op" and _is_kernel_op(e["name"])
                          and not _covering(owned, e["ts"])]
    seconds = _flatten(window, spans, idle, compiling + stepping)
    in_step = seconds.pop("gaps in optimizer step", 0.0)
    seconds["host_gaps"] += in_step
    return round_event["dur"] / 1e6, seconds, in_step


def _is_kernel_op(name: str) -> bool:
    """An op that does work itself: aten ops and inductor's compiled graphs (its fused kernels run in there)."""
    return name.startswith("aten::") or name.startswith("## Call CompiledFxGraph")


def profile_round(run, trace_path: Path) -> dict:
    """Run one round of ``run`` under torch.profiler; write its trace to ``trace_path``; return the row's field."""
    device = run.device
    device_timeline = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device_timeline else [])
    devices.sync(device)
    with profile(activities=activities) as profiler:
        with record_function(ROUND_RANGE):
            start = time.perf_counter()
            run.run_round()
            round_seconds = time.perf_counter() - start
    trace_path.parent.mkdir(parents=True, exist_ok=True)
    # Exported plain, read back, then gzipped (Perfetto and chrome://tracing open .json.gz; a seed round's trace
    # is tens of MB plain) under a temporary name and renamed: a cut-off export never looks like a whole trace.
    plain = trace_path.with_name(trace_path.name + ".export.json")
    partial = trace_path.with_name(trace_path.name + ".part")
    try:
        profiler.export_chrome_trace(str(plain))
        text = plain.read_text()
        with gzip.open(partial, "wt") as packed:
            packed.write(text)
        os.replace(partial, trace_path)
    finally:
        plain.unlink(missing_ok=True)
        partial.unlink(missing_ok=True)
    events = json.loads(text)["traceEvents"]
    traced_seconds, seconds, gaps_in_step = breakdown(events, device_timeline)
    basis = {"cuda": "GPU timeline (kernels)", "cpu": "main thread's ops"}.get(
        device.type, f"host ops only: torch.profiler does not see inside the {device.type} device")
    return {"basis": basis, "round_seconds": round_seconds, "traced_seconds": traced_seconds, "seconds": seconds,
            "host_gaps_in_optimizer_step": gaps_in_step, "trace": str(trace_path)}
