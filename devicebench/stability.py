"""Is a row's timing trustworthy? Flags rounds that vary too much or are too short to time well.

Thresholds follow pyperf's habits: a coefficient of variation of 10% or more, or a slowest round at least 1.5x
the median (one disturbed round: another process, thermal throttling), or rounds under a millisecond, where
timer resolution and Python overhead are a visible share of the figure.
"""

from __future__ import annotations

import statistics

MAX_CV = 0.10
MAX_SLOWEST_OVER_MEDIAN = 1.5
MIN_ROUND_SECONDS = 1e-3


def assess(round_seconds: list[float]) -> str | None:
    """None when the rounds look steady, else the reason, with the figure."""
    if not round_seconds:
        return "no timed rounds"
    median = statistics.median(round_seconds)
    if median < MIN_ROUND_SECONDS:
        return f"rounds too short to time well (median {median * 1e3:.3f} ms < {MIN_ROUND_SECONDS * 1e3:g} ms)"
    reasons = []
    if len(round_seconds) > 1:
        cv = statistics.stdev(round_seconds) / statistics.mean(round_seconds)
        if cv >= MAX_CV:
            reasons.append(f"rounds vary: coefficient of variation {cv:.0%} (>= {MAX_CV:.0%})")
    slowest = max(round_seconds)
    if slowest >= MAX_SLOWEST_OVER_MEDIAN * median:
        reasons.append(f"slowest round {slowest / median:.2f}x the median (>= {MAX_SLOWEST_OVER_MEDIAN}x)")
    return "; ".join(reasons) or None


MAX_PROCESS_SPREAD = 1.10


def assess_processes(process_medians: list[float]) -> str | None:
    """None when the processes agree, else how far apart the slowest and fastest process's medians are."""
    if len(process_medians) < 2:
        return None
    spread = max(process_medians) / min(process_medians)
    if spread >= MAX_PROCESS_SPREAD:
        return (f"processes differ: the slowest process's median is {spread:.2f}x the fastest's "
                f"(>= {MAX_PROCESS_SPREAD}x)")
    return None
