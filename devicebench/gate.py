"""What the regression gate (``devicebench compare --fail-on-regression``) reads from the change view's tables:
the slowdowns it fails on, and what stops it from judging at all (exit 2: it never passes by default).

It fails (1) on a slowdown that survives Holm's correction over the rows judged and reaches the threshold, or on
step counts grown beyond it. It cannot judge (2) when a row is inconclusive, when runs come from two machines,
when a later run lacks rows of the baseline (cut off, or failed: a broken row would pass unseen), or when a later
run holds the baseline's own measurements (the same file twice, or a copy: always "no change").
"""

from __future__ import annotations

from devicebench import counts, host
from devicebench.compare import Table, count_changes, why_not_comparable
from devicebench.results import Run
from devicebench.threshold import Threshold, percent


def missing_rows(tables: list[Table], runs: list[Run]) -> list[str]:
    """A line per baseline row that some later run lacks, with how that run's closest row differs where it has one:
    otherwise it was cut off, or the row failed or was skipped there, and the gate would pass a row it never saw."""
    lines = []
    for table in tables:
        if table.baseline is None:
            continue
        present = [column.run for column in table.columns]
        for run in runs[1:]:
            if not any(run is other for other in present):
                base = table.cells[table.baseline]
                namesakes = [row for row in run.rows if row.test == base.test]  # measured as another experiment
                why = why_not_comparable(base.identity, namesakes, in_baseline=True) if namesakes else \
                    ("no such row: the run was cut off" if run.interrupted else
                     "no such row: it failed or was skipped there, or was not selected")
                lines.append(f"{table.title}: not in {run.path.name}: {why}")
    return lines


def against_itself(tables: list[Table]) -> list[str]:
    """A line per later run whose row is the very row of the baseline, every field alike (the same run given twice,
    or a copy of it): judged, it always reads "no change"."""
    found = {}
    for table in tables:
        if table.baseline is None:
            continue
        base = table.cells[table.baseline]
        for index, (column, cell) in enumerate(zip(table.columns, table.cells)):
            if index != table.baseline and cell.extra == base.extra:
                found[column.run.path] = (table.columns[table.baseline].run.path, column.run.path)
    return [f"note: {run.name} holds the same measurements as {base.name} (the same run twice, or a copy): "
            f"a run compared with itself always reads no change" for base, run in found.values()]


def host_memory_notes(runs: list[Run]) -> list[str]:
    """A line per later run whose host memory settings differ from the baseline run's (host.py): a seed row's
    change may be theirs, not the code's (docs/comparing.md, "How much noise to expect")."""
    base = runs[0]
    return [f"note: {run.path.name} ran under other host memory settings than {base.path.name} "
            f"({'; '.join(differences)}): rows that allocate on the host (seed) move with them; to judge the code "
            f"alone, compare runs made under the same settings (devicebench info shows this host's)"
            for run in runs[1:]
            if (differences := host.memory_differences(base.machine_info.get("host_memory"),
                                                       run.machine_info.get("host_memory")))]


def across_machines(tables: list[Table]) -> list[str]:
    """A note per (baseline run, later run) of a judged row whose two runs come from different machines: a change
    there holds the machines' own difference, which no spread of one machine's processes measures (a CI fleet's
    runners: false regressions of 28-34%, DESIGN.md), so the gate does not judge it. Worker pairs ran on one machine
    whatever their environments' torch builds report of its accelerators."""
    found: dict[tuple[int, int], tuple[Run, Run]] = {}
    for table in tables:
        if table.baseline is None:
            continue
        base = table.columns[table.baseline].run
        for column, verdict in zip(table.columns, table.verdicts):
            if verdict is not None and not verdict.paired and column.run.machine_key != base.machine_key:
                found[(id(base), id(column.run))] = (base, column.run)
    return [f"note: {run.path.name} ran on another machine than {base.path.name} ({base.machine_label} -> "
            f"{run.machine_label}): its changes are the machines' and the code's together"
            for base, run in found.values()]


def regressions(tables: list[Table]) -> list[str]:
    """Change-view rows significantly slower than their baseline by more than the threshold, after Holm's correction
    over every row judged (significance.holm), as lines to print."""
    return [line for line, survives in _judged_slowdowns(tables) if survives]


def uncorrected_regressions(tables: list[Table]) -> list[str]:
    """Slowdowns significant alone that do not survive the correction for the number of rows judged: said, not
    gated on."""
    return [line for line, survives in _judged_slowdowns(tables) if not survives]


def _judged_slowdowns(tables: list[Table]) -> list[tuple[str, bool]]:
    return [(f"{table.title} on {column.label}: {verdict.describe()}", not verdict.not_after_holm)
            for table in tables for column, verdict in zip(table.columns, table.verdicts)
            if verdict is not None and verdict.is_regression]


def count_regressions(tables: list[Table], threshold: float | Threshold) -> list[str]:
    """Rows whose step counts grew beyond the threshold: a gate failure from one process a side. The size for every
    row, a pipeline's own not: counts carry no noise, which is what a pipeline's larger size allows for."""
    lines = []
    for table, column, changed in count_changes(tables):
        grown = counts.increases_beyond(changed, Threshold.of(threshold).default)
        if grown:
            lines.append(f"{table.title} on {column.label}: counts per step grew: {counts.describe(grown)}")
    return lines


def inconclusive(tables: list[Table]) -> list[str]:
    """Rows whose data could not have seen a change of their threshold's size, each with that size."""
    return [f"at {percent(verdict.threshold)}: {table.title} on {column.label}: {verdict.noise()}"
            for table in tables for column, verdict in zip(table.columns, table.verdicts)
            if verdict is not None and verdict.inconclusive]
