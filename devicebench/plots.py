"""Charts (matplotlib, no display needed): throughput bars for ``compare``, lines per torch version for ``history``."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # write files; never open a window
import matplotlib.pyplot as plt  # noqa: E402

from devicebench import runfile  # noqa: E402
from devicebench.compare import Table  # noqa: E402
from devicebench.history import Timeline, steps  # noqa: E402
from devicebench.significance import speed  # noqa: E402
from devicebench.threshold import DEFAULT_THRESHOLD, Threshold  # noqa: E402


def compare_chart(tables: list[Table], path: Path) -> None:
    """One panel per workload and pipeline; a bar per run/device; throughput in samples/s (log scale)."""
    fig, axes = plt.subplots(len(tables), 1, figsize=(9, 2.2 + 1.1 * len(tables) * 1.6), squeeze=False)
    for axis, table in zip(axes[:, 0], tables):
        labels, values = [], []
        for column, row in zip(table.columns, table.cells):
            labels.append(column.label)
            values.append(row.samples_per_s)
        bars = axis.barh(range(len(values)), values, color="tab:blue")
        axis.set_yticks(range(len(values)), labels, fontsize=7)
        axis.invert_yaxis()
        axis.set_xscale("log")
        axis.set_title(table.title, fontsize=9)
        axis.bar_label(bars, labels=[f"{v:,.0f}/s" for v in values], fontsize=7, padding=2)
    axes[-1, 0].set_xlabel("training samples per second (higher is better)")
    fig.tight_layout()
    _save(fig, path)


def history_chart(lines: list[Timeline], path: Path,
                  threshold: float | Threshold = DEFAULT_THRESHOLD) -> None:
    """One panel per machine and device; a line per row identity across torch versions, steps circled."""
    fig, axes = plt.subplots(len(lines), 1, figsize=(9, 3.2 * len(lines)), squeeze=False)
    for axis, timeline in zip(axes[:, 0], lines):
        for key in timeline.keys():
            rows, verdicts = timeline.rows(key), steps(timeline, key, threshold)
            points = [(i, row.samples_per_s) for i, row in enumerate(rows) if row is not None]
            axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=key.config_label())
            # The versions where the row stepped (significant and beyond the threshold): red slower, green faster.
            for index, (row, verdict) in enumerate(zip(rows, verdicts)):
                if row is not None and verdict is not None and verdict.is_change:
                    color = "tab:red" if verdict.is_regression else "tab:green"
                    axis.plot(index, row.samples_per_s, marker="o", markersize=13, markerfacecolor="none",
                              markeredgewidth=2, color=color)
                    axis.annotate(speed(verdict.ratio), (index, row.samples_per_s), textcoords="offset points",
                                  xytext=(7, 7), fontsize=7, color=color)
        axis.set_xticks(range(len(timeline.versions)), [f"torch {v}" for v in timeline.versions], fontsize=8)
        axis.set_yscale("log")
        axis.set_ylabel("samples/s")
        axis.set_title(f"{timeline.machine_label} · {timeline.device_name}", fontsize=9)
        axis.legend(fontsize=6)
    fig.tight_layout()
    _save(fig, path)


def _save(fig, path: Path) -> None:
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=110)
    plt.close(fig)
    runfile.write_atomically(Path(path), image.getvalue())  # no half-written chart left behind
