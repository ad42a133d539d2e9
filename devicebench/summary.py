"""The devicebench lines printed after pytest-benchmark's table: what this suite exists for, one line a row.

pytest-benchmark's own table shows milliseconds per round (training and validation together); the figures a user
came for — training samples/s, how long the training epoch took, how much of it waited for the data loader, the
device's name and utilization, whether the row is trustworthy — live in the row's fields. When a reference
machine's curated run (``results/reference/MACHINE/suite.json``) has a row of the same identity (the same
experiment on the same device model, pinned rounds included), the line adds the ratio to it, so a fresh run says
at once how it stands against that machine.
"""

from __future__ import annotations

from pathlib import Path

from devicebench import results
from devicebench.results import Row

REFERENCE_RUN = "suite.json"  # the one curated run of each reference machine


def reference_rows(folder: Path) -> list[tuple[Row, Path]]:
    """Every readable row of the curated runs under ``folder`` (results/reference), with its file, newest first."""
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.glob(f"*/{REFERENCE_RUN}")):
        run = results.load_run(path, quiet=True)
        if run is not None:
            # A planted slowdown is a test of the tools, never a machine's reference figure.
            found.extend((row, path, run.datetime) for row in run.rows
                         if not row.extra.get("planted_slowdown_fraction"))
    found.sort(key=lambda item: item[2], reverse=True)
    return [(row, path) for row, path, _ in found]


def duration(seconds: float) -> str:
    """``152.3 ms`` under a second, ``45.17 s`` from there: never an exponent."""
    return f"{seconds * 1e3:.4g} ms" if seconds < 1 else f"{seconds:.4g} s"


# A hypervisor that gives other guests this share of the machine's CPU time is worth a mark on the row (host.py).
STEAL_SHOWN = 0.02


def lines(finished: list[tuple[str, dict]], references: list[tuple[Row, Path]]) -> list[str]:
    """One line per finished row: test, device, samples/s, epoch, loader wait, utilization, marks, reference."""
    rows = [(name, Row(test=name, extra=extra)) for name, extra in finished]
    width = max((len(name) for name, _ in rows), default=0)
    out = []
    for name, row in rows:
        extra = row.extra
        epoch = row.median_seconds  # the median process's median, as samples_per_s
        utilization = extra.get("utilization")
        parts = [name.ljust(width), str(extra.get("device_name", extra["device"])),
                 f"{extra['samples_per_s']:,.0f} samples/s", f"epoch {duration(epoch)}",
                 *([f"{extra['tokens_per_s']:,.0f} tokens/s",
                    f"{duration(extra['ms_per_iteration'] / 1e3)}/iteration"]
                   if "tokens_per_s" in extra else []),
                 f"loader wait {extra.get('loader_wait_fraction', 0):.0%}",
                 f"utilization {utilization:.1%}" if isinstance(utilization, (int, float)) else "utilization n/a"]
        steal = max((process.get("cpu_steal_fraction") or 0.0 for process in extra["processes"]), default=0.0)
        marks = [mark for mark, on in (("UNSTABLE", extra.get("unstable")), ("PARITY FAILED", extra.get("parity_failed")),
                                      ("cpu fallback", extra.get("cpu_fallback_ops")),
                                      (f"host gave {steal:.0%} of its CPU to other machines", steal >= STEAL_SHOWN),
                                      ("synthetic data", extra.get("data_source") == "synthetic")) if on]
        reference = next(((other, path) for other, path in references if other.identity == row.identity), None)
        if reference is not None:
            other, path = reference
            ratio = other.median_seconds / epoch  # > 1: this run is faster than the reference
            parts.append(f"{ratio:.2f}x the speed of reference {path.parent.name}")
        out.append("  ".join(parts + ([f"[{', '.join(marks)}]"] if marks else [])))
    return out
