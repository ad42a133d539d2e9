"""``devicebench history``: throughput per torch version for each machine and device, with regressions marked.

Runs are grouped by machine and device (never merged across machines) and ordered by torch version; for each
torch version and row identity (results.RowIdentity: the work, the device and every option that changes it) the
latest run that has that row counts. Each step between consecutive torch versions is judged like ``compare``'s
change view (significance.py): a step is marked where a version is significantly slower (REGRESSION) or faster
(STEP) than the one before by more than the threshold.

Why not a change-point library (ruptures, or asv's own step detection): those look for where a long series of
single values shifts, and need many points to do it; a sweep has a handful of torch versions, each with several
processes. A two-sample test between consecutive versions on their per-process values uses exactly what we
have, is the same rule as ``compare`` (so history and compare never disagree about a pair), and says
"inconclusive" where the processes spread too much to tell.
"""

from __future__ import annotations

from dataclasses import dataclass

from packaging.version import InvalidVersion, Version

from devicebench import counts
from devicebench.calibration import Calibration
from devicebench.noise import Noise
from devicebench.compare import plain_table
from devicebench.results import Row, RowIdentity, Run
from devicebench.significance import Verdict, judge
from devicebench.threshold import DEFAULT_THRESHOLD, Threshold


@dataclass
class Timeline:
    """One machine and device: its runs per torch version (oldest torch first, each version's runs by date)."""

    machine_label: str
    device: str
    device_name: str
    versions: list[str]
    runs: list[list[Run]]
    calibration: Calibration | None = None  # this machine's measured noise (calibration.py)

    def rows(self, key: RowIdentity) -> list[Row | None]:
        """Per torch version, the row of the latest run that has it."""
        return [None if found is None else found[1] for found in self._runs_and_rows(key)]

    def noise(self, key: RowIdentity) -> list[Noise | None]:
        """Per torch version, that row's calibrated noise on this machine, where measured."""
        return [None if found is None or self.calibration is None else self.calibration.noise_for(*found)
                for found in self._runs_and_rows(key)]

    def _runs_and_rows(self, key: RowIdentity) -> list[tuple[Run, Row] | None]:
        found = []
        for version_runs in self.runs:
            rows = [(run, r) for run in version_runs for r in run.rows if r.identity == key]
            found.append(rows[-1] if rows else None)
        return found

    def keys(self) -> list[RowIdentity]:
        return list(dict.fromkeys(r.identity for runs in self.runs for run in runs for r in run.rows
                                  if r.device == self.device))


def _version_key(text: str):
    try:
        return (0, Version(text), "")
    except InvalidVersion:
        return (1, Version("0"), text)


def timelines(runs: list[Run], calibration: Calibration | None = None) -> list[Timeline]:
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        for device in dict.fromkeys(row.device for row in run.rows):
            groups.setdefault((run.machine_key, device), []).append(run)
    result = []
    for (_, device), group in groups.items():
        by_version: dict[str, list[Run]] = {}
        order: dict[str, tuple] = {}
        for run in sorted(group, key=lambda r: r.datetime):
            by_version.setdefault(run.version_label, []).append(run)
            order[run.version_label] = (_version_key(run.torch_version), run.sweep_position or 0)
        versions = sorted(by_version, key=order.__getitem__)
        name = next(row.device_name for row in group[0].rows if row.device == device)
        result.append(Timeline(group[0].machine_label, device, name, versions, [by_version[v] for v in versions],
                               calibration))
    return result


def steps(timeline: Timeline, key, threshold: float | Threshold = DEFAULT_THRESHOLD) -> list[Verdict | None]:
    """Verdict of each torch version against the previous one that has this row (None for the first)."""
    verdicts, previous, previous_noise = [], None, None
    for row, noise in zip(timeline.rows(key), timeline.noise(key)):
        if row is None:
            verdicts.append(None)
            continue
        verdicts.append(judge(previous, row, threshold, noise or previous_noise) if previous is not None else None)
        previous, previous_noise = row, noise
    return verdicts


def render(lines_of: list[Timeline], threshold: float | Threshold = DEFAULT_THRESHOLD) -> tuple[str, list[str]]:
    """The history tables, and one line per step found (slower steps start with "regression"; steps the data
    could not judge at the threshold, with "inconclusive")."""
    out, found = [], []
    for timeline in lines_of:
        title = f"{timeline.machine_label} · {timeline.device} ({timeline.device_name})"
        headers = [f"torch {v} ({runs[-1].datetime[:10]})" for v, runs in zip(timeline.versions, timeline.runs)]
        body = []
        for key in timeline.keys():
            cells, previous_version, previous_row = [], None, None
            for version, row, verdict in zip(timeline.versions, timeline.rows(key), steps(timeline, key, threshold)):
                if row is None:
                    cells.append("-")
                    continue
                text = f"{row.samples_per_s:,.0f}"
                changed = counts.changes(previous_row.extra, row.extra) if previous_row is not None else []
                grown = counts.increases_beyond(changed, Threshold.of(threshold).default)  # no noise: compare.py
                if grown:
                    found.append(f"regression: {title}: {key.config_label()}: torch {previous_version} -> "
                                 f"{version}: counts per step grew: {counts.describe(grown)}")
                if changed:
                    text += f" [counts: {counts.describe(changed)}]"
                if verdict is not None and verdict.is_change:
                    kind = "REGRESSION" if verdict.is_regression else "STEP"
                    text += f" {kind} {verdict.describe()}"
                    found.append(f"{'regression' if verdict.is_regression else 'step'}: {title}: "
                                 f"{key.config_label()}: torch {previous_version} -> {version}: {verdict.describe()}")
                elif verdict is not None and verdict.inconclusive:
                    text += " (inconclusive)"
                    found.append(f"inconclusive: {title}: {key.config_label()}: torch {previous_version} -> "
                                 f"{version}: {verdict.describe()}")
                cells.append(text)
                previous_version, previous_row = version, row
            body.append([key.config_label()] + cells)
        out += [plain_table(title, headers, body, corner="samples/s"), *_sources(timeline), ""]
    return "\n".join(out), found


def _sources(timeline: Timeline) -> list[str]:
    """Which file each torch version's column reads, where a version has more than one run (the latest with the
    row counts: a quick check run after a long one replaces it)."""
    return [f"  torch {version}: {len(runs)} runs; each row from the latest that has it: "
            f"{', '.join(run.path.name for run in reversed(runs))} (newest first)"
            for version, runs in zip(timeline.versions, timeline.runs) if len(runs) > 1]
