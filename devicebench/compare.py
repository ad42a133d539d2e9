"""Compare saved runs. Two questions, two views, one rule for what counts as a change (significance.py).

- **change**: the same experiment (``RowIdentity``: work, device, options) in two or more runs, e.g. before and
  after a torch upgrade. Each row's baseline is that row in the first run given (the baseline run). Rows whose
  identity differs (another device, ``--workers 8`` instead of 0, another workload version) are never reported as
  a change; a note says what differs. Only this view feeds the regression gate.
- **devices**: one device against another for the same configuration (an M1's mps against a GTX 1060's cuda, the
  cpu against the cuda of one machine): ratios against a baseline device the user names (``--baseline-device``),
  else the first column's. No regression gate: a slower device is not a regression.

``auto`` picks change when some row's identity appears in more than one run, else devices.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Hashable

from devicebench import counts, fallback, schema, significance
from devicebench.calibration import Calibration
from devicebench.noise import Noise
from devicebench.errors import UsageError
from devicebench.results import Row, RowIdentity, Run
from devicebench.significance import Verdict, judge
from devicebench.threshold import DEFAULT_THRESHOLD, Threshold

VIEWS = ("auto", "change", "devices")


@dataclass(frozen=True)
class Column:
    """The rows of one run on one device."""

    run: Run
    device: str
    label: str


@dataclass
class Table:
    title: str
    columns: list[Column]
    cells: list[Row]
    baseline: int | None  # index of the baseline column; None: nothing to compare against
    verdicts: list[Verdict | None]
    notes: list[str]

    @property
    def workload(self) -> str:
        return self.cells[0].workload

    @property
    def pipeline(self) -> str:
        return self.cells[0].pipeline


def columns_of(runs: list[Run]) -> list[Column]:
    """Every (run, device) pair with rows, labelled by device name + torch version + device type."""
    found = []
    for run in runs:
        for device in dict.fromkeys(row.device for row in run.rows):
            name = next(row.device_name for row in run.rows if row.device == device)
            found.append(Column(run, device, f"{name} · torch {run.torch_version} · {device}"))
    counts: dict[str, int] = {}
    for column in found:
        counts[column.label] = counts.get(column.label, 0) + 1
    # Same label twice (two runs of one machine and torch): tell them apart by file.
    return [Column(c.run, c.device, f"{c.label} · {c.run.path.stem[:40]}") if counts[c.label] > 1 else c
            for c in found]


def choose_view(runs: list[Run], view: str) -> str:
    if view not in VIEWS:
        raise UsageError(f"--view {view!r}: choose one of {', '.join(VIEWS)}")
    if view != "auto":
        return view
    seen: dict[RowIdentity, set[int]] = {}
    for index, run in enumerate(runs):
        for row in run.rows:
            seen.setdefault(row.identity, set()).add(index)
    return "change" if any(len(indices) > 1 for indices in seen.values()) else "devices"


def build_tables(runs: list[Run], threshold: float | Threshold = DEFAULT_THRESHOLD, view: str = "auto",
                 baseline_device: str | None = None,
                 calibration: Calibration | None = None) -> tuple[str, list[Table]]:
    """The chosen view's name and its tables (one per identity, or per configuration in the devices view).
    ``calibration``: this machine's measured noise, used for rows of one machine in the change view."""
    view = choose_view(runs, view)
    if view == "change":
        if baseline_device is not None:
            raise UsageError("--baseline-device belongs to --view devices; the change view's baseline is the "
                             "first run given")
        return view, change_tables(runs, threshold, calibration)
    return view, device_tables(runs, threshold, baseline_device)


def _group(columns: list[Column], key: Callable[[Row], Hashable]) -> dict[Hashable, list[tuple[Column, Row]]]:
    """Each column's rows, gathered by ``key`` (the identity, or the configuration without the device)."""
    groups: dict[Hashable, list[tuple[Column, Row]]] = {}
    for column in columns:
        for row in column.run.rows:
            if row.device == column.device:
                groups.setdefault(key(row), []).append((column, row))
    return groups


def _noise(calibration: Calibration | None, base: tuple[Column, Row], cand: tuple[Column, Row]) -> Noise | None:
    return None if calibration is None else calibration.noise_between(base[0].run, base[1], cand[0].run, cand[1])


def _verdicts(members: list[tuple[Column, Row]], baseline: int | None, threshold: float | Threshold,
              calibration: Calibration | None = None) -> list[Verdict | None]:
    """Each cell judged against the baseline cell (None for the baseline itself, when there is none, or when either
    device failed its parity check: a wrong result is never ranked, faster or slower)."""
    cells = [row for _, row in members]
    if baseline is not None and cells[baseline].extra.get("parity_failed"):
        return [None] * len(cells)
    return [None if baseline is None or i == baseline or row.extra.get("parity_failed")
            else _judged(members[baseline], members[i], threshold, calibration)
            for i, row in enumerate(cells)]


def _judged(base: tuple[Column, Row], cand: tuple[Column, Row], threshold: float | Threshold,
            calibration: Calibration | None) -> Verdict:
    """``judge`` with the row's calibration; with none found, the verdict says why where a calibration of the same
    row pinned the other way exists (a user's calibration from before rounds were pinned)."""
    noise = _noise(calibration, base, cand)
    verdict = judge(base[1], cand[1], threshold, noise)
    if noise is None and calibration is not None and verdict.calibration is None:
        why = (calibration.pinned_otherwise(base[0].run, base[1], cand[0].run, cand[1])
               or calibration.host_memory_otherwise(base[0].run, base[1], cand[0].run, cand[1]))
        if why is not None:
            verdict = replace(verdict, calibration=why)
    return verdict


def change_tables(runs: list[Run], threshold: float | Threshold, calibration: Calibration | None = None) -> list[Table]:
    baseline_run = runs[0]
    tables = []
    for identity, members in _group(columns_of(runs), lambda row: row.identity).items():
        cells = [row for _, row in members]
        baseline = next((i for i, (column, _) in enumerate(members) if column.run is baseline_run), None)
        verdicts = _verdicts(members, baseline, threshold, calibration)
        notes = []
        if baseline is None:
            notes.append(f"not compared: {why_not_comparable(identity, baseline_run.rows)}")
        elif len(cells) == 1:
            notes.append("only in the baseline run: nothing to compare")
        title = f"{identity.config_label()} · {identity.device_name} ({identity.device})"
        tables.append(Table(title, [column for column, _ in members], cells, baseline, verdicts, notes))
    return correct_for_rows(tables)


def why_not_comparable(identity: RowIdentity, other_rows: list[Row], across_devices: bool = False,
                       in_baseline: bool = False) -> str:
    """Name the fields in which this row differs from the other runs' closest row (``across_devices``: the
    devices view, where the device fields may differ; ``in_baseline``: this row is the baseline run's, and the
    later runs lack it)."""
    fields = (*schema.WORK_FIELDS, *schema.OPTION_FIELDS, schema.PINNED_ROUNDS,
              *(() if across_devices else schema.DEVICE_FIELDS))
    ours = identity.fields()
    candidates = [row.identity.fields() for row in other_rows]
    if not candidates:
        return "the other runs have no rows"
    closest = min(candidates, key=lambda theirs: sum(ours.get(f) != theirs.get(f) for f in fields))
    before, after = (ours, closest) if in_baseline else (closest, ours)
    differences = [f"{f} {before.get(f)} -> {after.get(f)}" for f in fields if ours.get(f) != closest.get(f)]
    if across_devices:
        return ("no row of the same configuration in the other runs; the closest differs in " + ", ".join(differences)
                + (" (rows of result schema 1 have no valid_samples: re-measure that machine)"
                   if any(d.startswith("valid_samples") and "None" in d for d in differences) else ""))
    lacking, whose = ("the later runs", "their") if in_baseline else ("the baseline run", "its")
    return (f"{lacking} {'have' if in_baseline else 'has'} no row of this identity; {whose} closest row differs in "
            f"{', '.join(differences)} (a different experiment, not a change)")


def device_tables(runs: list[Run], threshold: float | Threshold, baseline_device: str | None) -> list[Table]:
    columns = columns_of(runs)
    if baseline_device is not None and baseline_device not in {c.device for c in columns}:
        raise UsageError(f"--baseline-device {baseline_device}: no run has {baseline_device} rows; they have "
                         f"{', '.join(sorted({c.device for c in columns}))}")
    tables = []
    for members in _group(columns, lambda row: row.identity.without_device()).values():
        cells = [row for _, row in members]
        baseline = 0
        if baseline_device is not None:
            baseline = next((i for i, (column, _) in enumerate(members) if column.device == baseline_device), None)
        verdicts = _verdicts(members, baseline, threshold)
        notes = [] if baseline is not None else [f"no {baseline_device} row for this configuration: ratios omitted"]
        tables.append(Table(cells[0].identity.config_label(), [column for column, _ in members], cells, baseline,
                            verdicts, notes))
    return tables


def correct_for_rows(tables: list[Table]) -> list[Table]:
    """Mark every change, faster or slower, that is significant alone but not after Holm's correction over all the
    rows judged (significance.holm), so that its cell says so where it is read, not only the gate's summary.
    ``change_tables`` ends here, so the gate (``regressions``) and the cells read the same correction.

    Why faster too: an A/A finds one row in twenty significant alone at 5%, faster as often as slower, and a cell
    reading "faster" with nothing to say it did not survive the correction reads as a real change."""
    judged = [verdict for table in tables for verdict in table.verdicts if verdict is not None]
    members = set(significance.holm_family(judged))
    surviving, family = significance.holm(judged), len(members)
    index = 0
    for table in tables:
        for position, verdict in enumerate(table.verdicts):
            if verdict is None:
                continue
            if index in members:  # its detectable change at the level the gate tests it (significance.py)
                verdict = table.verdicts[position] = verdict.for_family(family)
            if verdict.is_change and index not in surviving:
                table.verdicts[position] = replace(verdict, not_after_holm=family)
            index += 1
    return tables


def count_changes(tables: list[Table]) -> list[tuple[Table, Column, list[tuple[str, float, float]]]]:
    """Change view: every row whose step counts (counts.py) differ from its baseline's; exact from one process."""
    found = []
    for table in tables:
        if table.baseline is None:
            continue
        base = table.cells[table.baseline].extra
        for index, (column, cell) in enumerate(zip(table.columns, table.cells)):
            changed = counts.changes(base, cell.extra) if index != table.baseline else []
            if changed:
                found.append((table, column, changed))
    return found


# ------------------------------------------------------------------------------------------------ rendering
def _fmt_bytes(value) -> str:
    return f"{value / 2**20:,.0f} MiB" if isinstance(value, (int, float)) else "n/a"


def _fmt_fraction(value) -> str:
    if not isinstance(value, (int, float)):
        return "n/a"
    return f"{value:.0%}" if value >= 0.01 or value == 0 else f"{value:.2%}"


def _cell_lines(row: Row, verdict: Verdict | None, is_baseline: bool) -> dict[str, str]:
    extra = row.extra
    rounds = sum(len(process) for process in row.processes)
    timed = "training epoch" if row.measures_training_alone else "round (training + validation, schema 1)"
    lines = {
        f"median {timed}": f"{row.median_seconds:.4g} s",
        "processes × rounds": f"{len(row.processes)} ({rounds} rounds)",
        "samples/s": f"{row.samples_per_s:,.0f}",
        "vs baseline": "baseline" if is_baseline else ("n/a" if verdict is None else verdict.describe()),
        "noise": "" if verdict is None else verdict.noise(),
        "loader wait": _fmt_fraction(extra.get("loader_wait_fraction")),
        "peak memory": _fmt_bytes(extra.get("peak_memory_bytes")),
        "utilization": _fmt_fraction(extra.get("utilization")),
        "data": str(extra.get("data_source", "?")),
    }
    for field in ("workers", "dtype", "pretrained", "optimizer", "compile_cache"):  # configuration, where set
        if extra.get(field) is not None:
            lines[field] = str(extra[field])
    if extra.get("parity_failed"):
        lines["vs baseline"] = "not ranked: parity with the cpu FAILED (the device computed wrong values)"
    if extra.get("cpu_fallback_ops"):
        lines["cpu fallback"] = fallback.summary(extra["cpu_fallback_ops"])
    if extra.get("unstable"):
        lines["unstable"] = str(extra.get("unstable_reason"))
    for field in counts.FIELDS:
        if extra.get(field) is not None:
            lines[field.replace("_", " ")] = f"{extra[field]:,.4g}"
    return lines | _profile_lines(extra.get("profile"))


def _profile_lines(profile: dict | None) -> dict[str, str]:
    """Where a --profile round's time went, by kind, as ms and share: side by side across the columns."""
    if not profile:
        return {}
    total = sum(profile["seconds"].values()) or 1.0
    lines = {"profiled round": f"{profile['round_seconds'] * 1e3:.1f} ms ({profile['basis']})"}
    for kind in schema.PROFILE_KINDS:
        seconds = profile["seconds"].get(kind, 0.0)
        lines[f"  {kind}"] = f"{seconds * 1e3:.1f} ms ({seconds / total:.0%})"
    return lines


def render_compact(view: str, tables: list[Table], runs: list[Run], threshold: float | Threshold) -> str:
    """One line per row and run (pyperf's ``compare_to`` habit): the figure, the verdict and its noise; one line
    per run saying why, where its rows have no counterpart in another run. ``--details``: the full tables."""
    process_counts = sorted({len(cell.processes) for table in tables for cell in table.cells})
    lines = [_view_header(view, tables),
             f"threshold {Threshold.of(threshold).describe()}; processes per row: "
             f"{', '.join(map(str, process_counts)) or 'none'}; --details for every figure", ""]
    grid = [["row", "run", "epoch", "samples/s", "vs baseline"]]
    apart: dict[tuple[str, str], int] = {}  # (run label, why) -> rows
    notes: list[str] = []
    for table in tables:
        identity = table.cells[0].identity
        title = f"{identity.workload} · {identity.pipeline} · {identity.scale}"
        if view == "change":
            title += f" · {identity.device}"
        for index, (column, cell, verdict) in enumerate(zip(table.columns, table.cells, table.verdicts)):
            label = column.label + (" (interrupted run)" if column.run.interrupted else "")
            outcome = _outcome(cell, verdict, index == table.baseline)
            if view == "change" and table.baseline is not None and index != table.baseline:
                changed = counts.changes(table.cells[table.baseline].extra, cell.extra)
                outcome += f"; counts: {counts.describe(changed)}" if changed else ""
            grid.append([title if index == 0 else "", label, f"{cell.median_seconds * 1e3:,.4g} ms",
                         f"{cell.samples_per_s:,.0f}", outcome])
        if len(table.cells) == 1 and len(runs) > 1:
            others = [row for run in runs if run is not table.columns[0].run for row in run.rows]
            key = (table.columns[0].label, why_not_comparable(identity, others, across_devices=view == "devices",
                                                              in_baseline=view == "change"
                                                              and table.columns[0].run is runs[0]))
            apart[key] = apart.get(key, 0) + 1
        notes.extend(f"note: {title}: {note}" for note in table.notes
                     if not note.startswith(("not compared", "only in the baseline")))
    widths = [max(len(row[i]) for row in grid) for i in range(len(grid[0]) - 1)]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1] for row in grid]
    word = "not compared" if view == "change" else "not side by side"
    tail = [f"{word}: {count} row(s) of {label}: {why}" for (label, why), count in apart.items()]
    return "\n".join(lines + ([""] + tail + notes if tail or notes else []))


def _outcome(cell: Row, verdict: Verdict | None, is_baseline: bool) -> str:
    if cell.extra.get("parity_failed"):
        return "not ranked: parity with the cpu FAILED"
    if is_baseline:
        text = "baseline"
    elif verdict is None:
        text = "-"
    else:
        text = verdict.describe() + (f" [{verdict.noise()}]" if verdict.process_level else "")
    if cell.extra.get("cpu_fallback_ops"):
        text += f"; {fallback.summary(cell.extra['cpu_fallback_ops'])}"
    if cell.extra.get("unstable"):  # its rounds were disturbed: a verdict on it may be the disturbance's
        text += f"; UNSTABLE: {cell.extra.get('unstable_reason')}"
    return text


def render(view: str, tables: list[Table], markdown: bool = False) -> str:
    out = [_view_header(view, tables), ""]
    for table in tables:
        headers = [column.label + (" (interrupted run)" if column.run.interrupted else "")
                   for column in table.columns]
        per_column = [_cell_lines(cell, verdict, index == table.baseline)
                      for index, (cell, verdict) in enumerate(zip(table.cells, table.verdicts))]
        metrics = [m for m in dict.fromkeys(m for column in per_column for m in column)
                   if any(column.get(m) for column in per_column)]
        body = [[metric] + [column.get(metric, "") for column in per_column] for metric in metrics]
        out.append(_markdown(table.title, headers, body) if markdown else plain_table(table.title, headers, body))
        out.extend(f"  note: {note}" for note in table.notes)
        out.append("")
    return "\n".join(out)


def _view_header(view: str, tables: list[Table]) -> str:
    if view == "change":
        return ("view: change - the same experiment across runs; each row against that row in the first run given "
                "(the baseline run)")
    baselines = {table.columns[table.baseline].label for table in tables if table.baseline is not None}
    return (f"view: devices - one device against another for the same configuration; baseline: "
            f"{', '.join(sorted(baselines)) or 'none'} (choose with --baseline-device); no regression gate")


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
