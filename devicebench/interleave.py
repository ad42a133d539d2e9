"""Round interleaving: one live worker process per environment, taking turns round by round (A B B A A B ...).

Why. On the machines this project measured, most of the spread between separate processes of the same code is the
machine drifting under the run (another tenant, clocks, thermals), not the processes themselves: alternating
single rounds between two live workers cut the standard error of an A/B ratio from 4.9% to 1.7% (2-core VM,
mnist_mlp resident) and from 4.3% to 2.3% (H200 host), where whole processes alternated A B A B did not
(docs/comparing.md). Rounds next to each other in time see the same machine, so their ratio
cancels the drift; the A B B A order also cancels a drift that is linear over a pair of rounds.

How. The coordinator (``run_workers``) starts one worker process per environment (worker.py), each with two pipes
named in its task (turns.py holds the worker's end). A worker runs only while it holds the turn: at every point (the
start of each row, before each of its rounds) it writes where it stands, as one JSON line, and blocks until the
coordinator writes back the turn's sequence number. So exactly one worker runs at any moment (builds and
compiles included, but see below) while the others sit blocked on a pipe read, and each timed round is labelled
with the sequence number of its turn. At its first timed round a worker also says how long its last warm-up took,
and the answer says how many rounds to time, the same for every worker of the pair (``Scheduler._size``). A worker that
exits closes its pipes: the coordinator reads end-of-file, waits for the process and carries on with the others.

Both workers get the same rows, so they reach them in the same order; a row seen under another name at the same
place is an error (the environments would not be timing the same rows).

Building side by side. Building a row (its data, model, compilation, CUDA-graph capture) is not timed, and most
builds choose nothing by timing: the code they make is the same on a busy machine. From the second pair on, the
rows whose first-pair builds chose nothing by timing in every environment (tuning.build_chooses_by_timing: no
cuDNN algorithm search, a compile with fixed kernel choices or none) are built by all the workers at once, and
none runs a round before every one of them has built (``Scheduler.alongside``). A build that times candidates
(resnet18_cifar tuned on cuda) still runs alone, so that another worker's load cannot steer its choices.
"""

from __future__ import annotations

import json
import math
import os
import random
import selectors
import subprocess
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from devicebench import machine_lock
from devicebench.errors import DevicebenchError
from devicebench.runfile import FileError
from devicebench.until import clock

# A worker's command, given the two pipe ends it must hold (its turns to read, its requests to write).
WorkerCommand = Callable[[int, int], list[str]]


# ------------------------------------------------------------------------------------------------ the schedule
@dataclass(frozen=True)
class Point:
    """Where a worker waits: its ``item``-th row, named ``test``, at ``step`` (0: the row's start, where it builds
    it; k: before its k-th round, warm-up rounds counted)."""

    item: int
    test: str
    step: int
    # Set at a worker's first timed round of a test (turns.TurnPipe.first_timed_round): the scale's rounds and how
    # long the worker's last warm-up round took (None: it had none).
    minimum_rounds: int | None = field(default=None, compare=False)
    warmup_seconds: float | None = field(default=None, compare=False)
    row: dict | None = field(default=None, compare=False)  # the row, as its calibration names it
    together: bool = field(default=False, compare=False)  # at step 0: may build while the others do
    # Set by run_workers when the turn is granted: seconds since the workers started (where the time goes).
    granted_at: float | None = field(default=None, compare=False)

    @property
    def key(self) -> tuple[int, int]:
        return self.item, self.step


def turn_order(labels: list[str], step: int) -> list[str]:
    """The order of the workers at round ``step`` (0: the start of a test). Two or three workers: over every 2N
    rounds, the N turns of the labels (the last going first), then the N turns of the labels reversed begun one
    further; each worker holds every place and follows each worker (itself included: the warm second round)
    equally often. More workers: a shuffle seeded by the round, so that no worker keeps the same predecessor."""
    count = len(labels)
    if step == 0 or count < 2:
        return list(labels)
    if count > 3:
        return random.Random(step).sample(list(labels), count)
    turn = (step - 1) % (2 * count)
    base = labels if turn < count else labels[::-1]
    shift = turn if turn < count else (turn - count + 1) % count
    return base[count - shift:] + base[:count - shift]


@dataclass
class Scheduler:
    """Whose turn it is. The worker furthest behind goes next, so all stay at the same test and round; workers
    at the same round go in the order ``turn_order`` gives: A B, B A, A B, ... and with three, A B C, C A B,
    B C A, A C B, B A C, C B A. Pure logic, so that the order is tested without processes.

    Why turn, not reverse. A worker that runs two rounds in a row starts its second with its caches warm, and on
    host-bound rows that is a few percent (H200 host, two workers A B, B A, A/A: B/A was 3-11% higher in the rounds
    A began warm than in those B began warm, in 5 of 6 row-runs of mnist_mlp resident and tuned and resnet18_cifar
    tuned). Turning the order gives every worker its second round in a row equally often. Why the reversed turns
    too: turning alone (A B C, C A B, B C A) has each worker always follow the same one, and on the 2-core VM
    resnet18_cifar seed ran 2-4% faster after a planted slowdown's worker, an A/A false alarm (docs/comparing.md)."""

    labels: list[str]
    round_seconds: float | None = None  # each row's timed rounds last about this long per worker (None: as scaled)
    # (row, the rounds round_seconds gives) -> the rounds the row's question needs, or None to keep those
    # (processes.rounds_for_size, from the calibration, in --until runs); None: round_seconds decides alone.
    rounds_wanted: Callable[[dict, int], int | None] | None = None
    waiting: dict[str, Point] = field(default_factory=dict)
    sequence: int = 0
    tests: dict[int, str] = field(default_factory=dict)  # item -> the test name the first worker there had
    rounds: dict[int, int] = field(default_factory=dict)  # item -> the timed rounds every worker runs for it

    def wait(self, label: str, point: Point) -> None:
        known = self.tests.setdefault(point.item, point.test)
        if known != point.test:
            raise DevicebenchError(
                f"the environments do not run the same rows: row {point.item + 1} is {known} in one and "
                f"{point.test} in {label}. Interleaving needs the same rows on every side")
        self.waiting[label] = point

    def next_turn(self) -> tuple[str, int, Point] | None:
        """The label to run next, its turn's sequence number and where it stands; None when no worker waits."""
        if not self.waiting:
            return None
        lowest = min(point.key for point in self.waiting.values())
        step = lowest[1]
        order = turn_order(self.labels, step)
        label = next(label for label in order if label in self.waiting and self.waiting[label].key == lowest)
        point = self.waiting.pop(label)
        self.sequence += 1
        if point.minimum_rounds is not None:
            self._size(point)
        return label, self.sequence, point

    def alongside(self, point: Point) -> list[tuple[str, int, Point]]:
        """The other workers that build ``point``'s row at the same time as the one just given the turn: those
        waiting at its start that may (``together``), when it may too; each with its own sequence number."""
        if point.step != 0 or not point.together:
            return []
        labels = [label for label in self.labels
                  if label in self.waiting and self.waiting[label].key == point.key and self.waiting[label].together]
        granted = []
        for label in labels:
            self.sequence += 1
            granted.append((label, self.sequence, self.waiting.pop(label)))
        return granted

    def timed_rounds(self, point: Point) -> int | None:
        """How many rounds every worker times for ``point``'s test (decided at its first timed round), else None."""
        return self.rounds.get(point.item) if point.minimum_rounds is not None else None

    def _size(self, point: Point) -> None:
        """Decide, once per test and for every worker alike, how many rounds to time.

        Why more rounds than the scale's. A pair's estimate is the median of its rounds' ratios, so its noise
        shrinks with the square root of the rounds it has; a row of 0.16 s rounds that vary 12% from one to the
        next (mnist_mlp resident on the H200 host) gets its pair estimates from 10 rounds no closer than 5%,
        while its worker spends most of its time starting, building and compiling. So a fast row times rounds
        until they add up to ``round_seconds``, from the slowest warm-up any worker of the pair reported
        (the workers at this point are all waiting, the furthest behind going first, so every report is in).
        The same count for every worker keeps round k of A next to round k of B.

        In an ``--until`` run a row whose calibration records its round noise gets the rounds its question needs
        instead (``rounds_wanted``: fewer for a row that reaches its size anyway, more for one whose pairs are
        mostly round noise), within MAX_TIMED_ROUNDS and MAX_SIZED_SECONDS; the most any worker's row asks.
        """
        if point.item in self.rounds:
            return
        here = [other for other in (point, *self.waiting.values()) if other.key == point.key]
        slowest = max((other.warmup_seconds for other in here if other.warmup_seconds), default=None)
        rounds = rounds_for(point.minimum_rounds, slowest, self.round_seconds)
        wanted = [self.rounds_wanted(other.row, rounds) for other in here
                  if self.rounds_wanted is not None and other.row is not None]
        wanted = [count for count in wanted if count is not None]
        if wanted:
            longest = math.floor(MAX_SIZED_SECONDS / slowest) if slowest else MAX_TIMED_ROUNDS
            rounds = max(point.minimum_rounds, min(max(wanted), MAX_TIMED_ROUNDS, longest))
        self.rounds[point.item] = rounds


MAX_TIMED_ROUNDS = 200  # a 7 ms round (mnist_mlp tuned on an H200) would otherwise time thousands
# The most a worker's timed rounds of one row may last when sized by the calibration: a row whose pairs differ by
# more than round noise gains little from more rounds, and a pair of two workers of the whole suite should stay
# within a few minutes (H200: 3.5-4 min; resnet18_cifar seed was sized to 8 rounds of about 3.3 s).
MAX_SIZED_SECONDS = 60.0


def rounds_for(minimum: int, warmup_seconds: float | None, round_seconds: float | None) -> int:
    """The scale's ``minimum`` rounds, or as many as fill ``round_seconds`` at ``warmup_seconds`` a round."""
    if round_seconds is None or not warmup_seconds:
        return minimum
    return max(minimum, min(MAX_TIMED_ROUNDS, math.ceil(round_seconds / warmup_seconds)))


# ------------------------------------------------------------------------------------------------ coordinator side
@dataclass
class Worker:
    label: str
    process: subprocess.Popen
    turns: object  # our end of the pipe the worker reads its turns from
    requests: object  # our end of the pipe the worker writes where it waits to
    log: Path

    def next_request(self) -> Point | None:
        """Block until the worker waits for a turn (its point) or has exited (None)."""
        line = self.requests.readline()
        if not line:
            self.process.wait()
            return None
        message = json.loads(line)
        minimum = message.get("minimum_rounds")
        return Point(int(message["item"]), str(message["test"]), int(message["step"]),
                     None if minimum is None else int(minimum), message.get("warmup_seconds"), message.get("row"),
                     bool(message.get("together")))

    def grant(self, sequence: int, rounds: int | None = None) -> None:
        answer = {"sequence": sequence} if rounds is None else {"sequence": sequence, "rounds": rounds}
        self.turns.write(json.dumps(answer) + "\n")
        self.turns.flush()


def start_worker(label: str, command: WorkerCommand, log: Path) -> Worker:
    turns_read, turns_write = os.pipe()
    requests_read, requests_write = os.pipe()
    try:
        with open(log, "w") as output:
            process = subprocess.Popen(command(turns_read, requests_write), stdout=output, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL,
                                       pass_fds=(turns_read, requests_write, *machine_lock.inherited_fds()))
    except OSError as error:
        for descriptor in (turns_read, turns_write, requests_read, requests_write):
            os.close(descriptor)
        raise FileError(f"could not start {label}'s worker (log {log}): {error.strerror}") from None
    os.close(turns_read)  # the worker's ends: only the worker may hold them, so that its exit reads as EOF here
    os.close(requests_write)
    return Worker(label, process, os.fdopen(turns_write, "w", buffering=1), os.fdopen(requests_read, "r"), log)


def run_workers(commands: dict[str, WorkerCommand], logs: dict[str, Path], round_seconds: float | None = None,
                rounds_wanted: Callable[[dict, int], int | None] | None = None
                ) -> tuple[dict[str, int], list[tuple[int, str, Point]]]:
    """Run one worker per label, taking turns, until every one has exited: their exit codes, and the schedule
    (sequence number, label, point) of every turn given. ``round_seconds``, ``rounds_wanted``: Scheduler._size.

    On any error (a worker's protocol breaks, the rows differ, Ctrl-C) every worker still running is stopped.
    """
    labels = list(commands)
    scheduler = Scheduler(labels, round_seconds, rounds_wanted)
    workers: dict[str, Worker] = {}
    schedule: list[tuple[int, str, Point]] = []
    started = time.monotonic()
    try:
        for label in labels:
            workers[label] = start_worker(label, commands[label], logs[label])
        for label in labels:  # each runs its start-up (imports) up to its first turn
            _take_request(scheduler, workers[label])
        failed = [label for label in labels if workers[label].process.returncode not in (None, 0)]
        while not failed and (turn := scheduler.next_turn()) is not None:
            turns = [turn, *scheduler.alongside(turn[2])]  # one, or the workers building side by side
            for label, sequence, point in turns:
                schedule.append((sequence, label, replace(point, granted_at=time.monotonic() - started)))
                workers[label].grant(sequence, scheduler.timed_rounds(point))
            # None of them runs a round before all have built; a worker that fails is seen at once.
            if not _take_requests(scheduler, [workers[label] for label, _, _ in turns]):
                break  # a worker failed: the pair is lost, so the others are stopped rather than run to the end
    finally:
        for worker in workers.values():
            if worker.process.poll() is None:
                worker.process.kill()
                worker.process.wait()
            for pipe in (worker.turns, worker.requests):
                try:
                    pipe.close()
                except OSError:  # the worker is gone: a broken pipe on flush is expected
                    pass
    return {label: worker.process.returncode for label, worker in workers.items()}, schedule


def where_the_time_went(schedule: list, seconds: float, worker_files: list[dict]) -> str:
    """One line on a pair's time: start-up (before the first turn), building rows (step 0: data, model, compilation,
    the parity check) and rounds, of which how much was timed. Each turn lasts until the next is granted, so the
    parts add up to the pair's time, rows built side by side counted once."""
    granted = [point.granted_at for _, _, point in schedule if point.granted_at is not None]
    if not granted:
        return f"time: {clock(seconds)}"
    ends = granted[1:] + [seconds]
    durations = [(point.step, end - point.granted_at) for (_, _, point), end in zip(schedule, ends)]
    building = sum(duration for step, duration in durations if step == 0)
    rounds = sum(duration for step, duration in durations if step > 0)
    timed = sum(sum(row["extra"]["processes"][0]["round_seconds"]) for data in worker_files
                for row in data["rows"] if row["status"] == "measured")
    return (f"time: {clock(seconds)} = start-up {granted[0]:.0f} s + building rows {building:.0f} s + rounds "
            f"{rounds:.0f} s, of which timed {timed:.0f} s ({timed / seconds:.0%} of the pair; the rest is "
            f"warm-up rounds, evaluation and step counting)")


def _take_requests(scheduler: Scheduler, granted: list[Worker]) -> bool:
    """Let each of ``granted`` run until it waits again or exits, taking their requests as they come; False as soon
    as one has failed, without waiting for the others (its pair is lost: the caller stops them)."""
    with selectors.DefaultSelector() as selector:
        for worker in granted:
            selector.register(worker.requests, selectors.EVENT_READ, worker)
        for _ in granted:
            worker = selector.select()[0][0].data  # a worker has written its request, or exited
            selector.unregister(worker.requests)
            _take_request(scheduler, worker)
            if worker.process.returncode not in (None, 0):
                return False
    return True


def _take_request(scheduler: Scheduler, worker: Worker) -> None:
    """Let ``worker`` run until it waits again (queued for a turn) or exits."""
    point = worker.next_request()
    if point is not None:
        scheduler.wait(worker.label, point)
