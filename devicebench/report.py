"""``devicebench report RUN... -o report.html``: one self-contained HTML file to open and explore, offline.

Plotly draws it (its JavaScript ships inside the plotly wheel and is written into the file, so nothing is fetched
from a network when it opens). Four parts, each present when the runs hold what it needs:

- **devices**: training samples/s per configuration, a bar per run and device, with the spread between its
  processes (fastest to slowest process) as the error bar;
- **change**: first, the verdict table (row, run, ratio, 95% interval, verdict, noise), then the chart: each row
  against the same row (the same experiment) in the first run, the ratio on a log axis with its 95% interval,
  coloured by verdict. Both are ``compare``'s change view (its verdicts, Holm's correction and detectable changes
  at the gate's level, with this machine's calibrated noise where ``devicebench calibrate`` measured it);
- **history**: samples/s over torch versions per machine and device, steps marked (history.py);
- **profiles**: where a ``--profile`` round's time went, by kind, per row.
"""

from __future__ import annotations

import html
from pathlib import Path

from devicebench import compare, history, runfile, schema
from devicebench.calibration import Calibration
from devicebench.results import Row, Run
from devicebench.significance import Verdict
from devicebench.threshold import Threshold

VERDICT_COLOURS = {"slower": "#c0392b", "faster": "#27ae60", "no change": "#7f8c8d", "inconclusive": "#e6a23c"}


def write_report(runs: list[Run], path: Path, threshold: float | Threshold,
                 calibration: Calibration | None = None) -> Path:
    """Write the report for ``runs`` to ``path`` (atomically) and return it."""
    import plotly.graph_objects as go  # imported here: only this command needs plotly

    changes = _change_rows(runs, threshold, calibration)
    sections = [("Devices: training samples/s", _devices_figure(go, runs, threshold)),
                ("Change: each row against the first run, as compare judges it", _change_figure(go, changes)),
                ("History over torch versions", _history_figure(go, runs, threshold, calibration)),
                ("Where the time goes (--profile)", _profile_figure(go, runs))]
    parts, first = [_verdict_table(changes)] if changes else [], True
    for title, figure in sections:
        if figure is None:
            continue
        parts.append(f"<h2>{html.escape(title)}</h2>")
        parts.append(figure.to_html(full_html=False, include_plotlyjs=first))  # the library once, inline
        first = False
    listed = "".join(f"<li>{html.escape(str(run.path))} — {html.escape(run.machine_label)}, torch "
                     f"{html.escape(run.torch_version)}, {len(run.rows)} rows</li>" for run in runs)
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>devicebench report</title></head>"
            f"<body style='font-family: sans-serif'><h1>devicebench report</h1><p>Runs:</p><ul>{listed}</ul>"
            f"{''.join(parts) or '<p>No rows to show.</p>'}</body></html>")
    return runfile.write_atomically(path, page.encode("utf-8"))


def bar_label(row: Row) -> str:
    """A row's name on an axis (ASCII, so that it reads the same inside the figure's JSON)."""
    return f"{row.workload}:{row.pipeline}:{row.identity.scale}"


def _devices_figure(go, runs: list[Run], threshold: float | Threshold):
    _, tables = compare.build_tables(runs, threshold, view="devices")
    if not tables:
        return None
    figure = go.Figure()
    for column in compare.columns_of(runs):
        x, y, low, high = [], [], [], []
        for table in tables:
            for other, row in zip(table.columns, table.cells):
                if other == column:
                    rates = [int(row.extra["samples_per_round"]) / median for median in row.process_medians]
                    x.append(bar_label(row))
                    y.append(row.samples_per_s)
                    high.append(max(rates) - row.samples_per_s)
                    low.append(row.samples_per_s - min(rates))
        if x:
            figure.add_bar(name=column.label, x=x, y=y,
                           error_y=dict(type="data", symmetric=False, array=high, arrayminus=low))
    figure.update_layout(barmode="group", yaxis_type="log", yaxis_title="training samples/s (log)",
                         legend_title="run · device", height=520)
    return figure


def _verdict_kind(verdict: Verdict) -> str:
    if verdict.is_change:
        return "slower" if verdict.is_regression else "faster"
    return "inconclusive" if verdict.inconclusive else "no change"


def _change_rows(runs: list[Run], threshold: float | Threshold, calibration: Calibration | None
                 ) -> list[tuple[str, str, Verdict]]:
    """(row, run, verdict) of every later run's row against the first run's, from compare's change view."""
    if len(runs) < 2:
        return []
    found = []
    for table in compare.change_tables(runs, threshold, calibration):
        for column, row, verdict in zip(table.columns, table.cells, table.verdicts):
            if verdict is not None:
                found.append((f"{bar_label(row)}:{row.device}", column.run.path.stem[:40], verdict))
    return found


def _verdict_table(changes: list[tuple[str, str, Verdict]]) -> str:
    """The page's opening: one line per judged row, the verdict in words before any chart."""
    lines = []
    for row, run, verdict in changes:
        interval = "" if verdict.interval is None else f"{verdict.interval[0]:.3f}-{verdict.interval[1]:.3f}x"
        cells = (row, run, f"{verdict.ratio:.3f}x", interval, verdict.describe(), verdict.noise())
        colour = VERDICT_COLOURS[_verdict_kind(verdict)]
        lines.append(f"<tr style='color: {colour}'>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in cells)
                     + "</tr>")
    head = "".join(f"<th>{name}</th>" for name in ("row", "run", "time ratio", "95% interval", "verdict",
                                                      "noise"))
    return (f"<h2>Verdicts: each row against the first run</h2><table border='1' cellpadding='4' "
            f"style='border-collapse: collapse; font-size: 90%'><tr>{head}</tr>{''.join(lines)}</table>")


def _change_figure(go, changes: list[tuple[str, str, Verdict]]):
    """The ratios on a log axis (a 2x slowdown as far from 1 as a 2x speed-up), each with its 95% interval."""
    if not changes:
        return None
    figure = go.Figure()
    for kind, colour in VERDICT_COLOURS.items():
        chosen = [(row, run, verdict) for row, run, verdict in changes if _verdict_kind(verdict) == kind]
        if not chosen:
            continue
        ratios = [verdict.ratio for _, _, verdict in chosen]
        high = [verdict.interval[1] - verdict.ratio if verdict.interval else 0.0 for _, _, verdict in chosen]
        low = [verdict.ratio - verdict.interval[0] if verdict.interval else 0.0 for _, _, verdict in chosen]
        figure.add_scatter(name=kind, x=[f"{row} {run}" for row, run, _ in chosen], y=ratios, mode="markers",
                           marker=dict(color=colour, size=11),
                           text=[f"{verdict.describe()}; noise: {verdict.noise()}" for _, _, verdict in chosen],
                           error_y=dict(type="data", symmetric=False, array=high, arrayminus=low, color=colour))
    figure.add_hline(y=1.0, line_dash="dot")
    for size in sorted({verdict.threshold for _, _, verdict in changes}):  # each pipeline's, where they differ
        for bound in (1 / (1 + size), 1 + size):
            figure.add_hline(y=bound, line_dash="dash", line_color="#bbbbbb")
    figure.update_layout(yaxis_type="log", yaxis_title="time / first run's time (log; > 1 slower), 95% interval",
                         height=520)
    return figure


def _history_figure(go, runs: list[Run], threshold: float | Threshold, calibration: Calibration | None):
    lines = [timeline for timeline in history.timelines(runs, calibration) if len(timeline.versions) > 1]
    if not lines:
        return None
    figure = go.Figure()
    for timeline in lines:
        for key in timeline.keys():
            rows, verdicts = timeline.rows(key), history.steps(timeline, key, threshold)
            points = [(version, row, verdict) for version, row, verdict in zip(timeline.versions, rows, verdicts)
                      if row is not None]
            name = f"{timeline.device_name} ({timeline.device}) · {key.config_label()}"
            figure.add_scatter(name=name, x=[p[0] for p in points], y=[p[1].samples_per_s for p in points],
                               mode="lines+markers",
                               marker=dict(size=[14 if v is not None and v.is_change else 6 for _, _, v in points],
                                           color=[VERDICT_COLOURS[_verdict_kind(v)] if v is not None and
                                                  v.is_change else "#34495e" for _, _, v in points]),
                               text=[v.describe() if v is not None else "first version" for _, _, v in points])
    figure.update_layout(xaxis_title="torch version", yaxis_title="training samples/s", yaxis_type="log",
                         height=520)
    return figure


def _profile_figure(go, runs: list[Run]):
    profiled = [(run, row) for run in runs for row in run.rows if row.extra.get("profile")]
    if not profiled:
        return None
    figure = go.Figure()
    labels = [f"{row.test} · {run.path.stem[:30]}" for run, row in profiled]
    for kind in schema.PROFILE_KINDS:
        figure.add_bar(name=kind, x=labels,
                       y=[row.extra["profile"]["seconds"].get(kind, 0.0) * 1e3 for _, row in profiled])
    figure.update_layout(barmode="stack", yaxis_title="ms of the profiled round", height=520)
    return figure
