"""Pinning the thread that runs the rounds to one core, the same core for every worker of a pair.

Why. A host-bound accelerator row (the host launching many small kernels, or decoding images for them) goes at
the speed of the core its main thread runs on, and two workers of the same code, their rounds alternated, still
differed by more than their rounds explain: on the H200 host (16 cores), A/A pairs of mnist_mlp resident spread
3.7% about zero where their rounds allow 2.5%, resnet18_cifar seed 8.8% where they allow 6.7%, mnist_mlp seed
6.1%. The workers of one pair never run rounds at the same time (interleave.py), so they can share a core: each
pins its main thread to the pair's core for the row's rounds (warm-up and timed), and whatever that core is
worth is on both sides of the pair's ratio. The next pair gets the next core.

Measured (H200, torch 2.11.0+cu130, A/As of this harness, results/reference/h200/pinned/): pinned pairs spread
2.5% (mnist_mlp seed, 9 pairs), 2.6% (resident, 13) and 2.9% (resnet18_cifar seed, 6), against 6.1%, 3.7% and
8.8% for the free pairs of earlier runs (F-test p=0.005, 0.10, 0.008); in one run of four environments, two
pinned and two free side by side, mnist_mlp resident's pinned pairs spread 3.2% and the free 4.1% (4 pairs
each, too few to tell apart alone); the pinned workers there were 0.98x, 1.13x, 1.26x and 1.20x as fast as the
free ones of the same quadruple.

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

ROUND_CORE_VARIABLE = "DEVICEBENCH_ROUND_CORE"


def available() -> bool:
    return hasattr(os, "sched_setaffinity") and hasattr(os, "sched_getaffinity")


def allowed_cores() -> list[int]:
    """The cores this process may run on, in order; [] where the OS has no affinity call."""
    return sorted(os.sched_getaffinity(0)) if available() else []


def round_core_from_environment() -> int | None:
    """$DEVICEBENCH_ROUND_CORE as a core this process may use, None when unset or empty; a clear error otherwise."""
    text = os.environ.get(ROUND_CORE_VARIABLE, "").strip()
    if not text:
        return None
    try:
        core = int(text)
    except ValueError:
        raise ValueError(f"{ROUND_CORE_VARIABLE}={text!r}: give a core number, e.g. 3 (or leave it unset)") from None
    if available() and core not in allowed_cores():
        raise ValueError(f"{ROUND_CORE_VARIABLE}={core}: this process may run on cores {_ranges(allowed_cores())} only; give "
                         f"one of them (or leave it unset)")
    return core


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


def _ranges(cores: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'."""
    parts, start = [], None
    for position, core in enumerate(cores):
        if start is None:
            start = core
        if position + 1 == len(cores) or cores[position + 1] != core + 1:
            parts.append(str(start) if start == core else f"{start}-{core}")
            start = None
    return ", ".join(parts)
