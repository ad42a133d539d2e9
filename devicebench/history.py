"""``devicebench history``: throughput per torch version for each machine and device, with regressions marked.

Runs are grouped by machine and device (never merged across machines), ordered by torch version then date; for
each torch version the latest run counts. Each step between consecutive torch versions is judged like
``compare``: marked when significantly slower by more than the threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

from packaging.version import InvalidVersion, Version

from devicebench.compare import DEFAULT_THRESHOLD, Verdict, judge, plain_table
from devicebench.results import Row, Run


@dataclass
class Timeline:
    """One machine and device: the latest run per torch version, oldest torch first."""

    machine_label: str
    device: str
    device_name: str
    versions: list[str]
    runs: list[Run]

    def rows(self, key) -> list[Row | None]:
        return [next((r for r in run.rows if r.device == self.device and r.key == key), None) for run in self.runs]

    def keys(self) -> list[tuple[str, str, str]]:
        return list(dict.fromkeys(r.key for run in self.runs for r in run.rows if r.device == self.device))


def _version_key(text: str):
    try:
        return (0, Version(text))
    except InvalidVersion:
        return (1, text)


def timelines(runs: list[Run]) -> list[Timeline]:
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        for device in dict.fromkeys(row.device for row in run.rows):
            groups.setdefault((run.machine_key, device), []).append(run)
    result = []
    for (_, device), group in groups.items():
        latest: dict[str, Run] = {}
        for run in sorted(group, key=lambda r: r.datetime):
            latest[run.torch_version] = run  # later runs of one torch version replace earlier ones
        versions = sorted(latest, key=_version_key)
        name = next(row.device_name for row in group[0].rows if row.device == device)
        result.append(Timeline(group[0].machine_label, device, name, versions, [latest[v] for v in versions]))
    return result


def steps(timeline: Timeline, key, threshold: float = DEFAULT_THRESHOLD) -> list[Verdict | None]:
    """Verdict of each torch version against the previous one that has this row (None for the first)."""
    verdicts, previous = [], None
    for row in timeline.rows(key):
        if row is None:
            verdicts.append(None)
            continue
        comparable = previous is not None and previous.workload_version == row.workload_version
        verdicts.append(judge(previous, row, threshold) if comparable else None)
        previous = row
    return verdicts


def render(lines_of: list[Timeline], threshold: float = DEFAULT_THRESHOLD) -> tuple[str, list[str]]:
    """The history tables, and the regression lines found."""
    out, found = [], []
    for timeline in lines_of:
        title = f"{timeline.machine_label} · {timeline.device} ({timeline.device_name})"
        headers = [f"torch {v} ({run.datetime[:10]})" for v, run in zip(timeline.versions, timeline.runs)]
        body = []
        for key in timeline.keys():
            cells, previous_version = [], None
            for version, row, verdict in zip(timeline.versions, timeline.rows(key), steps(timeline, key, threshold)):
                if row is None:
                    cells.append("-")
                    continue
                text = f"{row.samples_per_s:,.0f}"
                if verdict is not None and verdict.is_regression:
                    text += f" REGRESSION {verdict.describe()}"
                    found.append(f"{title}: {' '.join(key)}: torch {previous_version} -> {version}: "
                                 f"{verdict.describe()}")
                elif verdict is not None and verdict.is_change:
                    text += f" ({verdict.describe()})"
                cells.append(text)
                previous_version = version
            body.append([" ".join(key)] + cells)
        out += [plain_table(title, headers, body, corner="samples/s"), ""]
    return "\n".join(out), found
