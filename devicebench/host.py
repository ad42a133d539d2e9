"""What the host did to a process's timed rounds: page faults, preemptions, and CPU time given to other machines.

Why. A host-bound row (a seed pipeline, waiting on the posts' CPU data loaders) goes at the speed the host gives
its one Python thread. On one H200 host resnet18_cifar seed's rounds moved between 3.3 and 6.9 s within a worker
while on another its pairs agreed within 3% (docs/comparing.md, "How much noise to expect"). Three things a host
does to a thread cost almost nothing to read around each round: the page faults the process took (memory handed
back and faulted in again, dear in a virtual machine), the times another runnable thread preempted it
(involuntary context switches), and the share of the machine's CPU time the hypervisor gave to other guests
(``steal`` in /proc/stat, Linux only). Each row keeps them per process, so a noisy host can be told from a noisy row.

And how the host hands out memory (``memory_settings``: transparent huge pages, allocator variables), recorded in
every result's ``machine_info``: a seed row's DataLoader collates a fresh batch on the host each step, and what
that batch costs depends on them (``HUGEPAGE_FOLDER``).
"""

from __future__ import annotations

import os
import statistics
from typing import Mapping, NamedTuple

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


# How the host hands memory to a process. A row that allocates a fresh batch each step on the host (the seed
# pipelines' DataLoader collates one) pays a page fault per 4 KiB of it, or per 2 MiB with transparent huge pages:
# on a 2-core VM these settings moved resnet18_cifar seed's loading by 15-25% (docs/comparing.md).
HUGEPAGE_FOLDER = "/sys/kernel/mm/transparent_hugepage"
HUGEPAGE_FILES = {"transparent_hugepages": "enabled", "transparent_hugepages_defrag": "defrag"}
# Read by glibc's malloc, jemalloc (MALLOC_CONF), tcmalloc (TCMALLOC_*), torch's cpu allocator, or preloading one.
# Any LD_PRELOAD counts: which preloaded library replaces malloc cannot be told from its name.
ALLOCATOR_VARIABLES = ("LD_PRELOAD", "GLIBC_TUNABLES", "THP_MEM_ALLOC_ENABLE")
ALLOCATOR_PREFIXES = ("MALLOC_", "TCMALLOC_")


def _sysfs_choice(path: str) -> str | None:
    """The chosen word of a sysfs choice file ("always [madvise] never" -> "madvise"); None if unreadable."""
    try:
        with open(path) as choices:
            text = choices.read()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else None


def memory_settings(environ: Mapping[str, str] | None = None, folder: str = HUGEPAGE_FOLDER) -> dict:
    """This host's transparent huge pages (Linux; left out where unreadable) and the allocator variables set in
    this process's environment (``allocator_environment``, {} when none)."""
    environ = os.environ if environ is None else environ
    settings: dict = {}
    for name, file in HUGEPAGE_FILES.items():
        value = _sysfs_choice(os.path.join(folder, file))
        if value is not None:
            settings[name] = value
    settings["allocator_environment"] = {name: environ[name] for name in sorted(environ)
                                         if name in ALLOCATOR_VARIABLES or name.startswith(ALLOCATOR_PREFIXES)}
    return settings


def memory_differences(before: dict | None, after: dict | None) -> list[str]:
    """What differs between two hosts' ``memory_settings`` ("transparent_hugepages always -> madvise"); [] when
    they agree or either is unknown (a file written before they were recorded). Huge pages unreadable on one side
    are unknown there, not a difference; an allocator variable set on one side alone is one."""
    if not isinstance(before, dict) or not isinstance(after, dict):
        return []
    flat_before, flat_after = _flat(before), _flat(after)
    names = (flat_before.keys() | flat_after.keys()) - {name for name in HUGEPAGE_FILES
                                                        if name not in flat_before or name not in flat_after}
    return [f"{name} {flat_before.get(name, 'unset')} -> {flat_after.get(name, 'unset')}"
            for name in sorted(names) if flat_before.get(name) != flat_after.get(name)]


def _flat(settings: dict) -> dict:
    """The huge-page settings and the allocator variables in one mapping of name to value."""
    return {**{name: value for name, value in settings.items() if name != "allocator_environment"},
            **(settings.get("allocator_environment") or {})}


def describe_memory(settings: dict) -> str:
    """``memory_settings`` in a line: "transparent huge pages madvise (defrag madvise); allocator variables: none"."""
    pages = settings.get("transparent_hugepages")
    text = "transparent huge pages " + (f"{pages} (defrag {settings.get('transparent_hugepages_defrag', '?')})"
                                         if pages else "unknown")
    variables = settings.get("allocator_environment") or {}
    return text + "; allocator variables: " + (", ".join(f"{k}={v}" for k, v in variables.items()) or "none")
