"""What the host did to a process's timed rounds: page faults, preemptions, and CPU time given to other machines.

Why. A host-bound row (a seed pipeline, waiting on the posts' CPU data loaders) goes at the speed the host gives
its one Python thread. On one H200 host resnet18_cifar seed's rounds moved between 3.3 and 6.9 s within a worker
while on another its pairs agreed within 3% (docs/comparing.md, "How much noise to expect"). Three things a host
does to a thread cost almost nothing to read around each round: the page faults the process took (memory handed
back and faulted in again, dear in a virtual machine), the times another runnable thread preempted it
(involuntary context switches), and the share of the machine's CPU time the hypervisor gave to other guests
(``steal`` in /proc/stat, Linux only). Each row keeps them per process, so a noisy host can be told from a noisy row.
"""

from __future__ import annotations

import statistics
from typing import NamedTuple

try:
    import resource
except ImportError:  # Windows: no getrusage; the rows then record no host counts
    resource = None


class Usage(NamedTuple):
    page_faults: int  # minor and major, of every thread of this process
    preemptions: int  # involuntary context switches


def usage() -> Usage | None:
    """This process's counts so far (about a microsecond); None where the OS has no getrusage."""
    if resource is None:
        return None
    counts = resource.getrusage(resource.RUSAGE_SELF)
    return Usage(counts.ru_minflt + counts.ru_majflt, counts.ru_nivcsw)


def cpu_ticks(path: str = "/proc/stat") -> tuple[int, int] | None:
    """The machine's (steal, total) CPU ticks so far, from the first line of /proc/stat; None where it has none."""
    try:
        with open(path) as stat:
            fields = stat.readline().split()
    except OSError:
        return None
    if len(fields) < 9 or fields[0] != "cpu":
        return None
    ticks = [int(value) for value in fields[1:]]
    # user nice system idle iowait irq softirq steal [guest guest_nice]: guest time is already counted in user.
    return ticks[7], sum(ticks[:8])


def round_counts(before: Usage | None, after: Usage | None) -> Usage | None:
    return None if before is None or after is None else Usage(*(b - a for a, b in zip(before, after)))


def process_fields(rounds: list[Usage | None], ticks_before: tuple[int, int] | None,
                   ticks_after: tuple[int, int] | None) -> dict:
    """A process entry's host fields over its timed rounds (schema.py names them); {} where none could be read."""
    fields: dict = {}
    if rounds and all(counts is not None for counts in rounds):
        fields["page_faults_per_round"] = [counts.page_faults for counts in rounds]
        fields["preemptions_per_round"] = [counts.preemptions for counts in rounds]
        fields["median_page_faults"] = statistics.median(fields["page_faults_per_round"])
        fields["median_preemptions"] = statistics.median(fields["preemptions_per_round"])
    if ticks_before is not None and ticks_after is not None and ticks_after[1] > ticks_before[1]:
        fields["cpu_steal_fraction"] = (ticks_after[0] - ticks_before[0]) / (ticks_after[1] - ticks_before[1])
    return fields
