"""E(N) from a ``devicebench scaling`` file: each row's total samples/s per world size against one device (or the
smallest world size run), with the 95% interval of a ratio of two sets of launches, and the table it prints."""

from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass


@dataclass(frozen=True)
class Efficiency:
    """One row, view and world size: its launches' totals, and E(N) against world size 1 with its interval."""

    row: str
    view: str
    world_size: int
    samples_per_s: list[float]  # total, one per launch
    efficiency: float | None
    interval: tuple[float, float] | None
    communication_share: float | None
    all_reduce_bytes: int | None
    tokens_per_sample: int | None = None  # char_gpt: a sample is a window of this many tokens


def efficiencies(data: dict) -> list[Efficiency]:
    from devicebench import significance

    totals: dict[tuple[str, str, int], list[float]] = {}
    shares: dict[tuple[str, str, int], list[float]] = {}
    facts: dict[tuple[str, str, int], dict] = {}
    for entry in data["launches"]:
        for row in entry["rows"]:
            key = (row["name"], entry["view"], entry["world_size"])
            totals.setdefault(key, []).append(row["extra"]["processes"][0]["ranks_samples_per_s"])
            if row["extra"].get("communication_share") is not None:
                shares.setdefault(key, []).append(row["extra"]["communication_share"])
            facts[key] = row["extra"]
    found = []
    for (name, view, size), values in sorted(totals.items()):
        # against one device; on several hosts, against the smallest world size run (size / smallest devices)
        smallest = min(n for (other, other_view, n) in totals if (other, other_view) == (name, view))
        # one rank is run once for both views, as weak (Scaling.order)
        base_key = (name, "weak", 1) if (name, "weak", 1) in totals else (name, view, smallest)
        base, devices = totals[base_key], size / base_key[2]
        ratio = math.exp(statistics.fmean(map(math.log, values)) - statistics.fmean(map(math.log, base)))
        efficiency, interval = ratio / devices, None
        if len(base) > 1 and len(values) > 1 and size > base_key[2]:
            verdict = significance.ratio_of_processes(base, values)
            interval = (verdict.interval[0] / devices, verdict.interval[1] / devices)
        extra = facts[(name, view, size)]
        share = statistics.median(shares[(name, view, size)]) if (name, view, size) in shares else None
        found.append(Efficiency(name, view, size, values, efficiency, interval, share,
                                extra.get("all_reduce_bytes_per_step"), extra.get("tokens_per_sample")))
    return found


UNSTABLE_SPREAD = 1.5  # launches of one size this far apart: a disturbed machine (quiet ones: within 1.31x)


def report(data: dict) -> str:
    lines = [f"{'row':<32} {'view':<6} {'N':>2} {'samples/s':>12} {'per device':>11} {'tokens/s':>11} {'E(N)':>5} "
             f"{'95% interval':>13} {'comm':>5} {'all-reduce/step':>15}"]
    unstable = []
    for item in efficiencies(data):
        total = statistics.median(item.samples_per_s)
        if (spread := max(item.samples_per_s) / min(item.samples_per_s)) > UNSTABLE_SPREAD:
            unstable.append(f"{item.row.removeprefix('test_')} {item.view} N={item.world_size} {spread:.2f}x")
        interval = f"{item.interval[0]:.2f}-{item.interval[1]:.2f}" if item.interval else "-"
        share = f"{item.communication_share:.0%}" if item.communication_share is not None else "-"
        moved = _bytes(item.all_reduce_bytes) if item.all_reduce_bytes is not None else "-"
        efficiency = f"{item.efficiency:.2f}" if item.efficiency is not None else "-"
        tokens = f"{total * item.tokens_per_sample:,.0f}" if item.tokens_per_sample else "-"
        lines.append(f"{item.row.removeprefix('test_'):<32} {item.view:<6} {item.world_size:>2} {total:>12,.0f} "
                     f"{total / item.world_size:>11,.0f} {tokens:>11} {efficiency:>5} {interval:>13} {share:>5} "
                     f"{moved:>15}")
    if unstable:
        lines.append(f"UNSTABLE: launches of one world size differ beyond {UNSTABLE_SPREAD}x ({'; '.join(unstable)}): "
                     f"the machine was busy or its clocks moved, so E(N) there says little; re-run on a quiet one")
    counts = Counter((entry["view"], entry["world_size"]) for entry in data["launches"])
    if counts and min(counts.values()) < 2:
        lines.append("E(N) has an interval from 2 launches a world size on (--launches, 3 by default)")
    if data["devicebench"].get("interrupted"):
        lines.append("interrupted: the launches above finished; the rest did not run")
    return "\n".join(lines)


def _bytes(count: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} B"

