"""Pinning the thread that runs the rounds to one core, the same core for every worker of a pair.

Why. A host-bound accelerator row (the host launching many small kernels, or decoding images for them) goes at
the speed of the core its main thread runs on, so two workers of the same code, their rounds alternated, still
differed by more than their rounds explain. The workers of one pair never run rounds at the same time
(interleave.py), so they can share a core: each pins its main thread to the pair's core for the row's rounds
(warm-up and timed), and whatever that core is worth is on both sides of the pair's ratio. The next pair gets the
next core. Pinned pairs spread less than free ones (measured: docs/comparing.md).

What it leaves alone. Only the calling (main) thread is pinned, and only during the rounds: building and
compiling (inductor's compile workers), the evaluation after the rounds, the step counts and the threads that
exist already (torch's intra-op pool, the CUDA driver's) keep every core. The pool is started before pinning
(``start_thread_pool``) so that its threads are not all created on the one core. Rows on the cpu are never
pinned: their work is the intra-op pool, which one core would change.

Where it is not available (macOS, so mps: no thread affinity call) nothing is pinned and the row says so
(``round_core`` null).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

def available() -> bool:
    return hasattr(os, "sched_setaffinity") and hasattr(os, "sched_getaffinity")


def allowed_cores() -> list[int]:
    """The cores this process may run on, in order; [] where the OS has no affinity call."""
    return sorted(os.sched_getaffinity(0)) if available() else []


def core_for_rounds(device_type: str, core: int | None) -> int | None:
    """The core a row's rounds run on: the pair's, for an accelerator row where the OS can pin a thread; None for
    a cpu row, whose work is the intra-op pool that one core would change."""
    return core if device_type != "cpu" and available() else None


def core_for_pair(index: int, cores: list[int]) -> int | None:
    """The core pair ``index`` (from 1) pins its rounds to: the allowed cores in turn, leaving out core 0 (on
    Linux it takes most interrupts); None with fewer than two cores, where a pinned thread would share its core
    with everything else the process does."""
    if len(cores) < 2:
        return None
    usable = [core for core in cores if core != 0]
    return usable[(index - 1) % len(usable)]


@contextmanager
def main_thread_on(core: int | None) -> Iterator[int | None]:
    """Run the block with the calling thread on ``core`` alone, then give it back the cores it had; yields the
    core pinned to, or None where nothing was pinned (no core asked, or no affinity call here)."""
    if core is None or not available():
        yield None
        return
    before = os.sched_getaffinity(0)  # pid 0: on Linux, the calling thread
    os.sched_setaffinity(0, {core})
    try:
        yield core
    finally:
        os.sched_setaffinity(0, before)


def start_thread_pool() -> None:
    """Make torch start its intra-op threads now, with every core, not later from the pinned thread (a thread
    inherits the affinity of the thread that creates it). An elementwise op over more elements than torch's
    grain size (32,768) runs in parallel, which starts the pool."""
    import torch

    torch.ones(1 << 17).add_(1)
