"""Compare saved runs: is B faster than A, is the difference real, and is it big enough to matter?

A change is reported only when it is *significant* (two-sided Mann-Whitney U test on the raw round times,
p < 0.05: no assumption that round times are normal) *and* larger than a threshold (default 5%); otherwise
"no significant change". This is asv's rule (ratio above ``--factor`` and Mann-Whitney agreement) and pyperf's
habit of saying "Not significant!" rather than printing a noisy ratio as news.
"""

from __future__ import annotations

from dataclasses import dataclass

from scipy.stats import mannwhitneyu

from devicebench.results import Row, Run

ALPHA = 0.05
DEFAULT_THRESHOLD = 0.05


@dataclass(frozen=True)
class Series:
    """One column of a comparison: the rows of one run on one device."""

    run: Run
    device: str
    label: str


@dataclass(frozen=True)
class Verdict:
    ratio: float  # candidate median time / baseline median time: > 1 is slower
    p_value: float | None
    significant: bool
    beyond_threshold: bool

    @property
    def is_change(self) -> bool:
        return self.significant and self.beyond_threshold

    @property
    def is_regression(self) -> bool:
        return self.is_change and self.ratio > 1

    def describe(self) -> str:
        if not self.is_change:
            reason = "not significant" if not self.significant else "below threshold"
            return f"no significant change ({reason}; {_speed(self.ratio)})"
        return f"{_speed(self.ratio)} (p={self.p_value:.3g})"


def _speed(ratio: float) -> str:
    return f"{1 / ratio:.2f}x faster" if ratio < 1 else f"{ratio:.2f}x slower"


def judge(baseline: Row, candidate: Row, threshold: float = DEFAULT_THRESHOLD) -> Verdict:
    ratio = candidate.median_seconds / baseline.median_seconds
    p_value = None
    significant = False
    if len(baseline.round_seconds) >= 2 and len(candidate.round_seconds) >= 2:
        p_value = float(mannwhitneyu(baseline.round_seconds, candidate.round_seconds,
                                     alternative="two-sided").pvalue)
        significant = p_value < ALPHA
    return Verdict(ratio, p_value, significant, abs(ratio - 1) >= threshold)


def series_of(runs: list[Run]) -> list[Series]:
    """Every (run, device) pair with rows, labelled by device name + torch version + device type."""
    found = []
    for run in runs:
        for device in dict.fromkeys(row.device for row in run.rows):
            name = next(row.device_name for row in run.rows if row.device == device)
            found.append(Series(run, device, f"{name} · torch {run.torch_version} · {device}"))
    counts: dict[str, int] = {}
    for series in found:
        counts[series.label] = counts.get(series.label, 0) + 1
    # Same label twice (two runs of one machine and torch): tell them apart by file.
    return [Series(s.run, s.device, f"{s.label} · {s.run.path.stem[:40]}") if counts[s.label] > 1 else s
            for s in found]


def rows_by_key(series: Series) -> dict[tuple[str, str, str], Row]:
    return {row.key: row for row in series.run.rows if row.device == series.device}


@dataclass
class Table:
    workload: str
    pipeline: str
    scale: str
    columns: list[Series]
    cells: list[Row | None]
    verdicts: list[Verdict | None]  # against the first column that has this row
    notes: list[str]


def build_tables(runs: list[Run], threshold: float = DEFAULT_THRESHOLD) -> list[Table]:
    columns = series_of(runs)
    indexed = [rows_by_key(series) for series in columns]
    keys = list(dict.fromkeys(key for rows in indexed for key in rows))
    tables = []
    for workload, pipeline, scale in keys:
        cells = [rows.get((workload, pipeline, scale)) for rows in indexed]
        present = [(series, cell) for series, cell in zip(columns, cells) if cell is not None]
        baseline = present[0][1]
        notes, verdicts = [], []
        for series, cell in zip(columns, cells):
            if cell is None or cell is baseline:
                verdicts.append(None)
            elif cell.workload_version != baseline.workload_version:
                verdicts.append(None)
                notes.append(f"not compared: {series.label} ran {workload} version {cell.workload_version}, "
                             f"the baseline version {baseline.workload_version} (the work differs)")
            else:
                verdicts.append(judge(baseline, cell, threshold))
        tables.append(Table(workload, pipeline, scale, columns, cells, verdicts, notes))
    return tables


def regressions(tables: list[Table]) -> list[str]:
    """Rows significantly slower than their baseline by more than the threshold, as lines to print."""
    found = []
    for table in tables:
        for series, verdict in zip(table.columns, table.verdicts):
            if verdict is not None and verdict.is_regression:
                found.append(f"{table.workload} [{table.pipeline}, {table.scale}] on {series.label}: "
                             f"{verdict.describe()}")
    return found


# ------------------------------------------------------------------------------------------------ rendering
def _fmt_bytes(value) -> str:
    return f"{value / 2**20:,.0f} MiB" if isinstance(value, (int, float)) else "n/a"


def _fmt_fraction(value) -> str:
    if not isinstance(value, (int, float)):
        return "n/a"
    return f"{value:.0%}" if value >= 0.01 or value == 0 else f"{value:.2%}"


def _cell_lines(row: Row | None, verdict: Verdict | None) -> dict[str, str]:
    if row is None:
        return {}
    extra = row.extra
    lines = {
        "median round": f"{row.median_seconds:.4g} s ({len(row.round_seconds)} rounds)",
        "samples/s": f"{row.samples_per_s:,.0f}",
        "vs first": "baseline" if verdict is None else verdict.describe(),
        "loader wait": _fmt_fraction(extra.get("loader_wait_fraction")),
        "peak memory": _fmt_bytes(extra.get("peak_memory_bytes")),
        "utilization": _fmt_fraction(extra.get("utilization")),
        "data": str(extra.get("data_source", "?")),
    }
    for field in ("workers", "dtype", "pretrained", "optimizer"):  # the configuration, where it varies
        if extra.get(field) is not None:
            lines[field] = str(extra[field])
    if extra.get("unstable"):
        lines["unstable"] = str(extra.get("unstable_reason"))
    return lines


def render(tables: list[Table], markdown: bool = False) -> str:
    out = []
    for table in tables:
        title = f"{table.workload} · {table.pipeline} · scale {table.scale}"
        present = [i for i, cell in enumerate(table.cells) if cell is not None]
        headers = [table.columns[i].label for i in present]
        per_column = [_cell_lines(table.cells[i], table.verdicts[i]) for i in present]
        metrics = list(dict.fromkeys(metric for column in per_column for metric in column))
        body = [[metric] + [column.get(metric, "") for column in per_column] for metric in metrics]
        out.append(_markdown(title, headers, body) if markdown else plain_table(title, headers, body))
        out.extend(f"  note: {note}" for note in table.notes)
        out.append("")
    return "\n".join(out)


def plain_table(title: str, headers: list[str], body: list[list[str]], corner: str = "") -> str:
    """A titled text table; ``body`` rows start with their label, ``headers`` name the other columns."""
    grid = [[corner] + headers] + body
    widths = [max(len(row[i]) for row in grid) for i in range(len(grid[0]))]
    lines = [title, "-" * len(title)]
    for index, row in enumerate(grid):
        lines.append(" | ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
        if index == 0:
            lines.append("-+-".join("-" * width for width in widths))
    return "\n".join(lines)


def _markdown(title: str, headers: list[str], body: list[list[str]]) -> str:
    lines = [f"**{title}**", "", "| | " + " | ".join(headers) + " |", "|---" * (len(headers) + 1) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)
