"""``devicebench scaling``: what N devices buy over one, through PyTorch's DistributedDataParallel.

For every world size asked (1 always among them, measured in the same run) and view (weak, strong: distributed.py),
torchrun starts one rank per device (``-m devicebench.distributed``), launch after launch, the world sizes taking
turns so that drift in the machine lands on each alike. One launch is one sample, as one process is elsewhere.

Figures per row, view and world size N:

- total training samples/s: the ranks' samples of a round over the round's training time, each round as long as
  its slowest rank (a DDP step waits for every rank); per device: that over N;
- scaling efficiency E(N) = total samples/s at N / (N x samples/s at 1): 1 is perfect (on several hosts, against
  the smallest world size run), with the 95% interval of a ratio of two sets of launches (Welch's t on the logs);
- the bytes each step all-reduces, and the share of a round with a collective in flight (distributed.py).

A launch that fails is stopped within a bounded time and named by rank (``diagnose``); the launches finished
before it are kept in the file, marked interrupted, as Ctrl-C keeps them.
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from devicebench import affinity, distributed, machine_lock, runfile, scaling_report
from devicebench.errors import DevicebenchError, UsageError
from devicebench.until import clock

SCALING_FORMAT = 1
# Keep NVLink multicast off in every rank: on shared hosts a program using it can take the GPUs out of service.
NO_MULTICAST = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
STOP_GRACE_SECONDS = 40  # after SIGTERM, before SIGKILL: torchrun itself gives its ranks 30 s
# A rank building a row (data, model, compilation) issues no collective and finishes no round for a while: the stall
# limit is this much longer while any rank is building.
BUILD_ALLOWANCE_SECONDS = 900


@dataclass(frozen=True)
class Topology:
    """How ranks are spread: one host (torchrun --standalone), or ``nodes`` hosts meeting at ``rendezvous``."""

    nodes: int = 1
    node_rank: int = 0
    rendezvous: str | None = None  # HOST:PORT of torchrun's c10d rendezvous, for nodes > 1

    def torchrun_arguments(self, world_size: int) -> list[str]:
        if self.nodes == 1:
            return ["--standalone", "--nproc-per-node", str(world_size)]
        if world_size % self.nodes:
            raise UsageError(f"world size {world_size} does not divide over {self.nodes} nodes")
        return ["--nnodes", str(self.nodes), "--node-rank", str(self.node_rank), "--rdzv-backend", "c10d",
                "--rdzv-endpoint", str(self.rendezvous), "--nproc-per-node", str(world_size // self.nodes)]


@dataclass
class Scaling:
    """One ``devicebench scaling`` run: the rows (a coordinator.Plan) at each world size and view."""

    plan: object  # coordinator.Plan
    world_sizes: tuple[int, ...]
    views: tuple[str, ...]
    launches: int
    collective_timeout: float
    topology: Topology = field(default_factory=Topology)

    def describe(self) -> dict:
        """What makes two runs the same run: a staging folder is resumed only by the same (staging.claim)."""
        return {"scaling": SCALING_FORMAT, "rows": [vars(row) for row in self.plan.rows],
                "options": self.plan.options.to_dict(), "world_sizes": list(self.world_sizes),
                "views": list(self.views), "launches": self.launches, "topology": vars(self.topology),
                "order": self.order()}  # a folder of launches is resumed only in the order it was run in

    def order(self) -> list[tuple[int, str, int]]:
        """(repetition, view, world size) in running order: the sizes rotate from one repetition to the next. One
        rank is the same launch in both views, so with both it runs once, as weak (``efficiencies`` knows)."""
        found = []
        for repetition in range(self.launches):
            shift = repetition % len(self.world_sizes)
            sizes = self.world_sizes[shift:] + self.world_sizes[:shift]
            found += [(repetition, view, size) for view in self.views for size in sizes
                      if not (size == 1 and view == "strong" and "weak" in self.views)]
        return found


def runnable(scaling: Scaling, echo: Callable[[str], None] = print) -> Scaling:
    """The rows that can run here, each one that cannot named with its reason (rows.skip_reason: a package it
    needs, a scale it does not offer, a scale too large for the cpu), as pytest benchmarks skips them."""
    from devicebench.rows import skip_reason

    kept = []
    for row in scaling.plan.rows:
        if reason := skip_reason(importlib.import_module(row.module), row.device, scaling.plan.options.scale):
            echo(f"    {row.name}: skipped: {reason}")
        else:
            kept.append(row)
    if scaling.plan.rows and not kept:
        raise UsageError("none of the selected rows can run here (the reasons are above)")
    return replace(scaling, plan=replace(scaling.plan, rows=tuple(kept)))


def check(scaling: Scaling, gpus_here: int) -> str:
    """The rows' one device type, after refusing what cannot run: mps, mixed devices, too few GPUs."""
    types = sorted({row.device for row in scaling.plan.rows})
    nodes = scaling.topology.nodes
    if nodes == 1 and 1 not in scaling.world_sizes:
        raise UsageError("--world-sizes must include 1: efficiency is measured against one device in the same run")
    uneven = [size for size in scaling.world_sizes if size % nodes]
    if uneven:
        raise UsageError(f"world size {', '.join(map(str, uneven))} does not divide over {nodes} nodes: give sizes "
                         f"that do (efficiency is then measured against the smallest)")
    if not scaling.plan.rows:
        raise UsageError("no row selected: check -k, --workload, --device and --pipeline after --")
    if len(types) > 1:
        raise UsageError(f"a data-parallel run measures one device type at a time; the rows are on "
                         f"{', '.join(types)}: give --device cuda or --device cpu after --")
    if types[0] not in ("cuda", "cpu"):
        raise UsageError(f"{types[0]} has no torch.distributed backend: data-parallel runs use cuda (nccl) or the "
                         f"cpu (gloo)")
    per_node = max(scaling.world_sizes) // scaling.topology.nodes
    if types[0] == "cuda" and per_node > gpus_here:
        raise UsageError(f"world size {max(scaling.world_sizes)} needs {per_node} GPUs on this host and it has "
                         f"{gpus_here}: give smaller --world-sizes, or more --nodes")
    return types[0]


def run(scaling: Scaling, output: Path, echo: Callable[[str], None] = print) -> Path:
    """Every launch in turn, the file rewritten after each; raises naming the rank when a launch fails.

    The launches' rows wait in a staging folder (staging.claim: one live run of a name, a second refused) until
    the last is in; the same command run again after a failure or Ctrl-C keeps the launches that finished."""
    from devicebench import staging

    folder = staging.claim(output.parent / f".{output.stem}.launches", scaling.describe())
    launches: list[dict] = []
    order = scaling.order()
    started = time.monotonic()
    finished = False
    try:
        for number, (repetition, view, size) in enumerate(order, 1):
            kept = folder.folder / f"launch-{number:03d}.json"
            if kept.exists():
                echo(f"launch {number}/{len(order)}: world size {size}, {view} view: already measured, kept")
                rows = json.loads(kept.read_text())["rows"]
            else:
                echo(f"launch {number}/{len(order)}: world size {size}, {view} view "
                     f"({clock(time.monotonic() - started)} so far)")
                try:
                    rows = launch(scaling, folder.folder / f"{view}-ws{size}-{repetition + 1}", size, view)
                except DevicebenchError as error:
                    raise DevicebenchError(f"{error}\n{number - 1} launch(es) finished and are kept: the same "
                                           f"command with --name {output.stem} resumes after them") from None
                runfile.write_json_atomically(kept, {"rows": rows})
                for row in rows:
                    echo(f"    {row['name'].removeprefix('test_')}: "
                         f"{row['extra']['processes'][0]['ranks_samples_per_s']:,.0f} samples/s over {size} rank(s)")
            launches.append({"world_size": size, "view": view, "repetition": repetition,
                             "threads_per_rank": threads_per_rank(scaling, size), "rows": rows})
            write(output, scaling, launches, interrupted=True)
        finished = True
    finally:
        if launches:
            write(output, scaling, launches, interrupted=not finished)
        folder.release(remove=finished)
    echo(scaling_report.report(load(output)))
    return output


def launch(scaling: Scaling, folder: Path, world_size: int, view: str) -> list[dict]:
    """One torchrun of every row at ``world_size``; its rows (rank 0's file), each process entry a launch."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("rank-*.json"):
        stale.unlink()
    output = folder / "rows.json"
    output.unlink(missing_ok=True)
    task = distributed.Launch([vars(row) for row in scaling.plan.rows], scaling.plan.options.to_dict(), view,
                              str(folder), str(output), scaling.collective_timeout)
    command = [sys.executable, "-m", "torch.distributed.run", *scaling.topology.torchrun_arguments(world_size),
               "--max-restarts", "0", "--monitor-interval", "1", "--log-dir", str(folder / "torchrun"),
               "-m", "devicebench.distributed",
               str(task.write(folder / "launch.json"))]
    # This devicebench (and a workload registered beside it) first; one Python, so no other torch to shadow.
    root = str(Path(distributed.__file__).resolve().parents[1])
    # NCCL's own timeout handling stays as torch sets it: a blocking wait (TORCH_NCCL_BLOCKING_WAIT) would make
    # DDP's host wait for every all-reduce and slow the very steps measured (pytorch/pytorch#50820).
    env = {**os.environ, **NO_MULTICAST, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": str(threads_per_rank(scaling, world_size))}
    log = folder / "torchrun.log"
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                   pass_fds=machine_lock.inherited_fds())
        stalled = _wait(process, folder, world_size, scaling.collective_timeout + 60)
    if process.returncode == 0 and output.exists() and scaling.topology.node_rank == 0:
        return [merge_ranks(row) for row in json.loads(output.read_text())["rows"]]
    if process.returncode == 0 and scaling.topology.node_rank != 0:
        return []
    statuses = {rank: _read_status(folder, rank) for rank in range(world_size)}
    if scaling.topology.nodes > 1:  # the other hosts' ranks leave their files there: judge this host's alone
        statuses = {rank: status for rank, status in statuses.items() if status is not None}
    raise DevicebenchError(diagnose(statuses, world_size, process.returncode, log, stalled, scaling.collective_timeout))


def threads_per_rank(scaling: Scaling, world_size: int) -> int:
    """Intra-op threads each rank gets: $OMP_NUM_THREADS where set; else this host's cores shared out among its
    ranks, so that world size 1 has them all, as a plain run does, and N ranks never oversubscribe them (torchrun
    would give each of several ranks one thread, and one rank all)."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return int(os.environ["OMP_NUM_THREADS"])
    cores = len(affinity.allowed_cores()) or os.cpu_count() or 1
    return max(1, cores // max(1, world_size // scaling.topology.nodes))


def _wait(process: subprocess.Popen, folder: Path, world_size: int, stall: float) -> bool:
    """Wait for torchrun; stop it and every rank when no rank's status moved for ``stall`` seconds (plus
    BUILD_ALLOWANCE_SECONDS while a rank builds a row). Stalled?"""
    last_change, last_seen, building = time.monotonic(), (), True
    try:
        while process.poll() is None:
            time.sleep(0.5)
            seen = tuple(_mtime(distributed.status_path(folder, rank)) for rank in range(world_size))
            if seen != last_seen:
                last_seen, last_change = seen, time.monotonic()
                building = any((_read_status(folder, rank) or {"building": True}).get("building")
                               for rank in range(world_size))
            elif time.monotonic() - last_change > stall + (BUILD_ALLOWANCE_SECONDS if building else 0):
                _stop(process, folder, world_size)
                return True
    except BaseException:
        _stop(process, folder, world_size)
        raise
    return False


def _stop(process: subprocess.Popen, folder: Path, world_size: int) -> None:
    """SIGTERM to torchrun (it stops its ranks, giving them 30 s), then SIGKILL to torchrun and to each rank's own
    process group (torchrun starts every rank in a session of its own)."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=STOP_GRACE_SECONDS)
        return
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        pass
    statuses = [_read_status(folder, rank) for rank in range(world_size)]
    for pid in [process.pid] + [status["pid"] for status in statuses if status and status.get("pid")]:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            continue
    process.wait()


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def _read_status(folder: Path, rank: int) -> dict | None:
    try:
        return json.loads(distributed.status_path(folder, rank).read_text())
    except (OSError, ValueError):
        return None


def diagnose(statuses: dict[int, dict | None], world_size: int, returncode: int | None, log: Path, stalled: bool,
             collective_timeout: float) -> str:
    """Which rank ended the launch, and how, from the ranks' status files (distributed.RankStatus).

    - A rank that failed on its own says why.
    - A rank that ended without a word (no final state) died, unless the ranks without a word are all ahead, in
      collectives issued, of one that torchrun stopped: then they are ranks NCCL's watchdog ended while they
      waited for it, and it is the one that stopped answering.
    - Otherwise the rank behind the others in collectives stopped answering; where the counts cannot tell, the
      ranks that lost a peer in a collective point at the others.
    """
    def where(status: dict | None) -> str:
        if not status or not status.get("row"):
            return "before its first row"
        return f"in {status['row']} after round {status['round']}"

    def issued(rank: int) -> int | None:
        status = statuses.get(rank)
        return status.get("collectives") if status else None

    see = f"torchrun's log: {log}"
    failed = {rank: s for rank, s in statuses.items() if s and s["state"] == "failed" and not s["lost_a_peer"]}
    if failed:
        rank, status = min(failed.items())
        return f"rank {rank} of {world_size} failed {where(status)}: {status['reason']} ({see})"
    silent = sorted(rank for rank, s in statuses.items() if s is None or s["state"] == "running")
    stopped = sorted(rank for rank, s in statuses.items() if s and s["state"] == "interrupted")
    waited = sorted(rank for rank, s in statuses.items() if s and s["state"] == "failed" and s["lost_a_peer"])
    counts = {rank: issued(rank) for rank in statuses if issued(rank) is not None}

    def hung(ranks: list[int], others: list[int]) -> str:
        least, most = min(counts[r] for r in ranks), max(counts[r] for r in others)
        return (f"rank {', '.join(map(str, ranks))} of {world_size} stopped answering {where(statuses[ranks[0]])}: "
                f"it issued {least} collectives and the others {most}, waiting for it (at most "
                f"{collective_timeout:g} s) ({see})")

    if silent and not stalled and len(silent) < world_size:
        behind = [rank for rank in stopped if rank in counts and all(
            r in counts and counts[r] > counts[rank] for r in silent)]
        if behind:
            return hung(behind, silent)
        rank = silent[0]
        counted = f" after {counts[rank]} collectives" if rank in counts else ""
        return (f"rank {', '.join(map(str, silent))} of {world_size} died {where(statuses[rank])}: it ended without "
                f"a result (killed, or crashed outside Python){counted}; torchrun stopped the others (exit code "
                f"{returncode}; {see})")
    if len(counts) == len(statuses) and counts and min(counts.values()) < max(counts.values()):
        least = min(counts.values())
        behind = sorted(rank for rank, count in counts.items() if count == least)
        return hung(behind, [rank for rank in counts if rank not in behind])
    if waited and len(waited) < len(statuses):
        others = sorted(set(statuses) - set(waited))
        return (f"rank {', '.join(map(str, others))} of {world_size} stopped answering {where(statuses[others[0]])}: "
                f"rank {', '.join(map(str, waited))} lost it in a collective (waiting at most "
                f"{collective_timeout:g} s) ({see})")
    if stalled:
        status = next((s for s in statuses.values() if s), None)
        return (f"no rank of {world_size} made progress (a round or a collective) for {collective_timeout + 60:g} s "
                f"{where(status)}: the launch was stopped ({see})")
    return f"torchrun exited with code {returncode} and no rank says why ({see})"


def merge_ranks(row: dict) -> dict:
    """Rank 0's row with its process entry made the launch's: each round as long as its slowest rank's, training
    samples/s over all ranks."""
    extra = row["extra"]
    ranks = extra["processes"][0].pop("ranks")
    process = dict(extra["processes"][0])
    for key in ("round_seconds", "train_seconds", "val_seconds"):
        process[key] = [max(values) for values in zip(*(rank[key] for rank in ranks))]
    total_samples = extra["samples_per_round"] * extra["world_size"]
    process["ranks_samples_per_s"] = total_samples / statistics.median(process["train_seconds"])
    process["rank_train_seconds"] = [rank["train_seconds"] for rank in ranks]
    extra["processes"] = [process]
    return row


def write(output: Path, scaling: Scaling, launches: list[dict], interrupted: bool) -> None:
    from devicebench import environment

    runfile.write_json_atomically(output, {
        "devicebench": {"scaling": SCALING_FORMAT, "interrupted": interrupted,
                        "world_sizes": list(scaling.world_sizes), "views": list(scaling.views),
                        "collective_timeout": scaling.collective_timeout},
        "machine_info": environment.machine_info(), "datetime": dt.datetime.now(dt.timezone.utc).isoformat(),
        "launches": launches})


def load(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise UsageError(f"{path}: not readable as a scaling file ({error})") from None
    found = data.get("devicebench", {}).get("scaling") if isinstance(data, dict) else None
    if found != SCALING_FORMAT:
        raise UsageError(f"{path}: scaling file format {found!r}, this devicebench reads {SCALING_FORMAT}")
    return data
