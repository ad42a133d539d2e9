"""One rank of a data-parallel run: ``torchrun ... -m devicebench.distributed LAUNCH.json``.

``devicebench scaling`` (scaling.py) writes the launch file and starts torchrun, which sets RANK, LOCAL_RANK and
WORLD_SIZE and meets the other ranks, on this host or across hosts. Each rank builds every row of the launch on its
own device with the trained module wrapped in DistributedDataParallel (``WorkloadRun.distributed``), and times the
rounds as a worker does (measure.py), every rank starting each timed round together. Rank 0 gathers the ranks'
rounds and writes the launch's rows. As for worker.py, the files are the answer, never printed text:

- ``rank-K.json``, rewritten after every round and whenever the rank has issued another collective (a thread
  reads the process group's sequence number every second): the rank's state (running, finished, failed,
  interrupted), its row and round, the collectives it issued, and why it failed, so that the launcher can name a
  rank that died or stopped answering (the one that issued fewer collectives than the others);
- the launch file, written by rank 0 once every row is measured.

The views (``scaling_view``): *weak* keeps the scale's batch and epoch on every rank (N ranks do N times the
work); *strong* shares the scale's batch and epoch out (each rank a 1/N share). Each rank draws its own data order
(seed + rank). DDP starts every rank from rank 0's weights.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

from devicebench import runfile

LAUNCH_FORMAT = 1
VIEWS = ("weak", "strong")
# A planted fault, to check what the launcher says when a rank fails: "die:RANK:ROUND" (the rank exits at once
# after that round, as a crash would) or "hang:RANK:ROUND" (it stops answering). Round numbers count every round of
# the launch, warm-up included, from 1.
FAULT_VARIABLE = "DEVICEBENCH_PLANTED_FAULT"


@dataclass
class Launch(runfile.TaskFile):
    """What every rank of one torchrun measures (written by scaling.py)."""

    rows: list[dict]  # rows.RowSpec fields
    options: dict  # options.RowOptions fields
    view: str
    folder: str  # the ranks' status files
    output: str  # rank 0's file of the launch's rows
    collective_timeout: float  # seconds a rank waits in a collective for the others before it fails
    format: int = LAUNCH_FORMAT
    FORMAT: ClassVar[int] = LAUNCH_FORMAT
    WHAT: ClassVar[str] = "devicebench.distributed: launch"


def status_path(folder: Path, rank: int) -> Path:
    return Path(folder) / f"rank-{rank}.json"


def rank_scale(scale, world_size: int, view: str):
    """The scale one rank runs: the whole of it (weak), or a 1/world_size share of its batch and epoch (strong)."""
    from devicebench.errors import UsageError

    if view == "weak" or world_size == 1:
        return scale
    shared = ("batch_size", "train_samples", "valid_samples", "valid_batch_size")
    uneven = [f"{name} {getattr(scale, name)}" for name in shared if getattr(scale, name) % world_size]
    if uneven:
        raise UsageError(f"strong scaling over {world_size} ranks shares out the {scale.name} scale's "
                         f"{', '.join(uneven)}, which do not divide by {world_size}: choose world sizes that "
                         f"divide them, or --view weak")
    return replace(scale, **{name: getattr(scale, name) // world_size for name in shared})


# What gloo and NCCL say when a collective loses a peer: it timed out waiting, or the peer's connection went away.
PEER_LOST_WORDS = ("timed out", "connection reset", "connection closed", "broken pipe", "remote worker",
                   "watchdog caught collective")
COLLECTIVE_WORDS = ("gloo", "nccl", "c10d", "processgroup", "collective")


def lost_a_peer(error: BaseException) -> bool:
    """The error came from a collective that lost another rank (which then is the one to blame), not this rank: a
    torch.distributed error, or a collective backend's words, saying a peer went away or never came."""
    import torch.distributed as dist

    kinds = tuple(getattr(dist, name) for name in ("DistBackendError", "DistNetworkError") if hasattr(dist, name))
    text = str(error).lower()
    from_a_collective = (bool(kinds) and isinstance(error, kinds)) or any(word in text for word in COLLECTIVE_WORDS)
    return from_a_collective and any(word in text for word in PEER_LOST_WORDS)


HEARTBEAT_SECONDS = 1.0


class RankStatus:
    """This rank's ``rank-K.json``: what it is doing, rewritten whole after every round and, from a heartbeat
    thread, whenever the rank has issued another collective (never otherwise: a file that stops changing is a rank
    that stopped making progress)."""

    def __init__(self, folder: Path, rank: int):
        import threading

        self.path = status_path(folder, rank)
        self.lock = threading.Lock()
        self.fields = {"rank": rank, "pid": os.getpid(), "host": os.uname().nodename, "state": "running",
                       "row": None, "round": 0, "building": True, "collectives": None, "reason": None,
                       "lost_a_peer": False}

    def update(self, **fields) -> None:
        """Rewrite the file with ``fields``, and the collectives issued as they stand now (while the group lives)."""
        with self.lock:
            issued = collectives_issued()
            if issued is not None:
                fields["collectives"] = issued
            self.fields.update(fields, updated=time.time())
            runfile.write_json_atomically(self.path, self.fields)

    def start_heartbeat(self) -> None:
        import threading

        def beat() -> None:
            while True:
                time.sleep(HEARTBEAT_SECONDS)
                issued = collectives_issued()
                if issued is not None and issued != self.fields["collectives"]:
                    self.update(collectives=issued)

        threading.Thread(target=beat, name="devicebench-heartbeat", daemon=True).start()


def collectives_issued() -> int | None:
    """How many collectives this rank has issued on the default process group (its sequence number: NCCL and gloo
    count each one as the host issues it); None before the group exists or where torch does not say."""
    import torch.distributed as dist

    try:
        if not dist.is_initialized():
            return None
        return int(dist.distributed_c10d._get_default_group()._get_sequence_number_for_group())
    except (AttributeError, RuntimeError, ValueError):
        return None


def _planted_fault(rank: int) -> tuple[str, int] | None:
    text = os.environ.get(FAULT_VARIABLE)
    if not text:
        return None
    kind, fault_rank, after_round = text.split(":")
    if kind not in ("die", "hang"):
        raise SystemExit(f"{FAULT_VARIABLE}={text!r}: give die:RANK:ROUND or hang:RANK:ROUND")
    return (kind, int(after_round)) if int(fault_rank) == rank else None


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: torchrun ... -m devicebench.distributed LAUNCH.json (started by devicebench scaling)",
              file=sys.stderr)
        return 2
    launch = Launch.read(Path(argv[0]))
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    status = RankStatus(Path(launch.folder), rank)
    status.update()
    from devicebench import signals

    undo_signals = signals.stop_like_ctrl_c()  # torchrun stops the other ranks with SIGTERM when one fails
    try:
        rows = _measure(launch, rank, local_rank, world_size, status)
    except KeyboardInterrupt:
        status.update(state="interrupted", reason="stopped (torchrun ends every rank when one fails)")
        return 130
    except Exception as error:  # noqa: BLE001 - the launcher reads the reason from the status file
        traceback.print_exc()
        status.update(state="failed", reason=f"{type(error).__name__}: {error}".splitlines()[0][:500],
                      lost_a_peer=lost_a_peer(error))
        return 1
    finally:
        undo_signals()
    if rank == 0:
        from devicebench import environment

        runfile.write_json_atomically(Path(launch.output), {
            "devicebench": {"launch": True, "world_size": world_size, "view": launch.view},
            "machine_info": environment.machine_info(), "datetime": dt.datetime.now(dt.timezone.utc).isoformat(),
            "rows": rows})
    status.update(state="finished")
    return 0


def _measure(launch: Launch, rank: int, local_rank: int, world_size: int, status: RankStatus) -> list[dict]:
    import torch
    import torch.distributed as dist

    from devicebench import devices, measure, rows
    from devicebench.options import RowOptions
    from devicebench.workloads.base import DistributedRank

    options = RowOptions.from_dict(launch.options)
    device_type = launch.rows[0]["device"]
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend, timeout=dt.timedelta(seconds=launch.collective_timeout))
    status.start_heartbeat()
    fault = _planted_fault(rank)
    device = torch.device(f"cuda:{local_rank}") if device_type == "cuda" else torch.device(device_type)
    identity = _identity(world_size, backend, launch.view, device)  # the same for every row of the launch
    device_name = devices.probe(device_type).name
    rounds_done = 0

    def after_round(number, total, warmup, stats, samples) -> None:
        nonlocal rounds_done
        rounds_done += 1
        status.update(round=rounds_done, building=False)
        if fault is not None and rounds_done == fault[1]:
            if fault[0] == "die":
                os._exit(3)
            while True:  # hang: no further collective, so the other ranks wait until they time out
                time.sleep(1)

    def barrier_loop(one_round, count, before_round) -> None:
        for _ in range(count):
            _barrier(device)  # every rank starts the round together, untimed
            one_round()

    measured: list[dict] = []
    try:
        for values in launch.rows:
            spec = rows.RowSpec(**values)
            status.update(row=spec.name, building=True)
            workload = spec.load()
            base = rows.run_config(spec, options, compile_cache="shared")
            config = replace(base, device=device, scale=rank_scale(base.scale, world_size, launch.view),
                             # a CUDA graph would hold DDP's collectives: left out, and the row says so
                             tuning=replace(base.tuning, cuda_graphs=False),
                             distributed=DistributedRank(rank, local_rank, world_size, launch.view))

            extra = measure.measure_row(workload, config, device_name, time_rounds=barrier_loop,
                                        progress=after_round, count_steps=False,
                                        after_rounds=lambda run: _communication(run, rank, device))
            extra.update(identity)
            gathered: list = [None] * world_size
            dist.all_gather_object(gathered, extra["processes"][0])
            extra["processes"][0]["ranks"] = gathered
            measured.append({"name": spec.name, "nodeid": spec.nodeid, "extra": extra})
    finally:
        status.update()  # the collectives issued, read while the group still exists
        dist.destroy_process_group()
    return measured


def _barrier(device) -> None:
    import torch.distributed as dist

    dist.barrier(device_ids=[device.index]) if device.type == "cuda" else dist.barrier()


def _identity(world_size: int, backend: str, view: str, device) -> dict:
    """The fields that make a data-parallel row its own experiment (schema.DISTRIBUTED_FIELDS)."""
    import torch

    nccl = None
    if device.type == "cuda":
        nccl = ".".join(map(str, torch.cuda.nccl.version())) if hasattr(torch.cuda, "nccl") else None
    return {"world_size": world_size, "distributed_backend": backend, "scaling_view": view, "nccl_version": nccl,
            "gpu_topology": gpu_topology() if device.type == "cuda" else None}


def gpu_topology() -> str | None:
    """``nvidia-smi topo -m`` as printed (how the GPUs connect: NVLink, PCIe), None where it cannot be read."""
    import subprocess

    try:
        done = subprocess.run(["nvidia-smi", "topo", "-m"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", done.stdout).strip()  # nvidia-smi underlines the header for terminals
    return text or None if done.returncode == 0 else None


def _communication(run, rank: int, device) -> dict:
    """Bytes a step moves between ranks, and one more untimed round under torch.profiler on every rank: the share
    of its wall time with a collective in flight, the median over the ranks (a rank the others wait for shows
    little; a rank that waits, much)."""
    import statistics

    import torch.distributed as dist
    from torch.profiler import ProfilerActivity, profile

    ddp_modules = [module for module in vars(run).values() if type(module).__name__ == "DistributedDataParallel"]
    if not ddp_modules:
        from devicebench.errors import UsageError

        raise UsageError(f"{type(run).__module__}.{type(run).__name__} keeps no module wrapped by "
                         f"WorkloadRun.distributed(), so its ranks trained apart: wrap the module its training "
                         f"step calls, and keep it as an attribute of the run (docs/internals.md)")
    gradients = sum(p.numel() * p.element_size() for m in ddp_modules for p in m.parameters() if p.requires_grad)
    buffers = sum(b.numel() * b.element_size() for m in ddp_modules if m.broadcast_buffers for b in m.buffers())
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as recorded:
        start = time.perf_counter()
        run.run_round()
        wall = time.perf_counter() - start
    spans = [(event.time_range.start, event.time_range.end) for event in recorded.events()
             if is_collective_event(event.name)]
    share = min(1.0, covered_seconds(spans) / 1e6 / wall) if wall > 0 else None
    shares: list = [None] * dist.get_world_size()
    dist.all_gather_object(shares, share)
    known = [value for value in shares if value is not None]
    return {"all_reduce_bytes_per_step": gradients, "broadcast_bytes_per_step": buffers,
            "communication_share": statistics.median(known) if known else None, "communication_share_by_rank": shares}


def is_collective_event(name: str) -> bool:
    """A profiler event that is a collective at work: an NCCL kernel, or gloo's operation on the cpu."""
    lowered = name.lower()
    return lowered.startswith("nccl") or lowered.startswith("gloo:")


def covered_seconds(spans: list[tuple[float, float]]) -> float:
    """The length of the union of ``spans`` (overlapping collectives counted once)."""
    total, end = 0.0, float("-inf")
    for start, stop in sorted(spans):
        if stop <= end:
            continue
        total += stop - max(start, end)
        end = stop
    return total


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
