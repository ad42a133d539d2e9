"""``devicebench report RUN... -o report.html``: one self-contained HTML file to open and explore, offline.

Plotly draws it (its JavaScript ships inside the plotly wheel and is written into the file, so nothing is fetched
from a network when it opens). Four parts, each present when the runs hold what it needs:

- **devices**: training samples/s per configuration, a bar per run and device, with the spread between its
  processes (fastest to slowest process) as the error bar;
- **change**: each row against the same row (the same experiment) in the first run that has it, the ratio with
  the smallest change the data could detect as its band, coloured by verdict (significance.py's verdicts, as
  ``compare`` prints them, with this machine's calibrated noise where ``devicebench calibrate`` measured it; the
  hover text says which noise was used);
- **history**: samples/s over torch versions per machine and device, steps marked (history.py);
- **profiles**: where a ``--profile`` round's time went, by kind, per row.
"""

from __future__ import annotations

import html
from pathlib import Path

from devicebench import compare, history, schema
from devicebench.calibration import Calibration
from devicebench.results import Row, Run
from devicebench.significance import Verdict, judge

VERDICT_COLOURS = {"slower": "#c0392b", "faster": "#27ae60", "no change": "#7f8c8d", "inconclusive": "#e6a23c"}


def write_report(runs: list[Run], path: Path, threshold: float, calibration: Calibration | None = None) -> Path:
    """Write the report for ``runs`` to ``path`` (atomically) and return it."""
    import plotly.graph_objects as go  # imported here: only this command needs plotly

    sections = [("Devices: training samples/s", _devices_figure(go, runs, threshold)),
                ("Change: each row against the first run that has it",
                 _change_figure(go, runs, threshold, calibration)),
                ("History over torch versions", _history_figure(go, runs, threshold, calibration)),
                ("Where the time goes (--profile)", _profile_figure(go, runs))]
    parts, first = [], True
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
    partial = path.with_name(path.name + ".part")
    partial.write_text(page, encoding="utf-8")
    partial.replace(path)
    return path


def bar_label(row: Row) -> str:
    """A row's name on an axis (ASCII, so that it reads the same inside the figure's JSON)."""
    return f"{row.workload}:{row.pipeline}:{row.identity.scale}"


def _devices_figure(go, runs: list[Run], threshold: float):
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


def _change_figure(go, runs: list[Run], threshold: float, calibration: Calibration | None):
    """Each row identity seen in several runs: every later run's row against the first run that has it."""
    by_identity: dict = {}
    for run in runs:
        for row in run.rows:
            by_identity.setdefault(row.identity, []).append((run, row))
    figure, shown = go.Figure(), 0
    for kind, colour in VERDICT_COLOURS.items():
        x, y, band, text = [], [], [], []
        for members in by_identity.values():
            base_run, baseline = members[0]
            for run, row in members[1:]:
                noise = None if calibration is None else calibration.noise_between(base_run, baseline, run, row)
                verdict = judge(baseline, row, threshold, noise)
                if _verdict_kind(verdict) != kind:
                    continue
                x.append(f"{bar_label(row)}:{row.device} {run.path.stem[:30]}")
                y.append(verdict.ratio)
                band.append(verdict.detectable or 0.0)
                text.append(f"against {base_run.path.name}: {verdict.describe()}; noise: {verdict.noise()}")
        if x:
            shown += len(x)
            figure.add_scatter(name=kind, x=x, y=y, mode="markers", marker=dict(color=colour, size=11), text=text,
                               error_y=dict(type="data", array=band, color=colour))
    if not shown:
        return None
    figure.add_hline(y=1.0, line_dash="dot")
    for bound in (1 - threshold, 1 + threshold):
        figure.add_hline(y=bound, line_dash="dash", line_color="#bbbbbb")
    figure.update_layout(yaxis_title="time / first run's time (> 1 slower); band: smallest detectable change",
                         height=520)
    return figure


def _history_figure(go, runs: list[Run], threshold: float, calibration: Calibration | None):
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
