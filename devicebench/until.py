"""When an ``--until`` run stops: each row's smallest detectable change after the pairs so far, against its size.

Stopping a row on its detectable change, which depends only on the spread and not on the difference seen, leaves
the test's error rate as it is; stopping on the p-value would not. A row's calibration (calibration.py) also says
how many rounds a worker should time of it (``rounds_for_size``) and forecasts the pairs a row still short needs.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Callable

from devicebench import significance
from devicebench.calibration import Calibration
from devicebench.noise import Noise
from devicebench.results import Run
from devicebench.threshold import Threshold, percent


class UntilTarget(Threshold):
    """``--until``: the smallest detectable change asked of every row, or of one pipeline's rows (``seed=10%``); the
    gate judges each row at the same sizes (``compare --threshold``, Threshold says why per pipeline)."""


@dataclass(frozen=True)
class Forecast:
    """What a row's calibration (where it records round noise) expects of its pairs at the rounds it timed."""

    pair_variance: float  # of a pair's estimate (log B/A) at ``rounds``
    df: int  # the calibration's degrees of freedom
    rounds: int
    per_process_variance: float  # the part no number of rounds removes


@dataclass(frozen=True)
class RowProgress:
    """Where one row stands in an ``--until`` run: what its pairs so far could detect."""

    test: str
    pipeline: str | None
    pairs: int
    detectable: float | None  # the worst over each environment against the first; None: cannot be judged
    calibrated: bool  # every verdict behind it pooled this machine's calibration (significance.py)
    forecast: Forecast | None = None  # the worst over the environments compared
    family: int = 1  # rows judged together: the detectable change is at the gate's level over them
    refused: str | None = None  # why an environment's verdict did not pool the calibration (it then says nothing)

    def pairs_needed(self, until: UntilTarget, most: int = 50) -> int | None:
        """The pairs at which the calibration expects this row to reach its size (None: more than ``most``, or no
        forecast): what to tell a user whose budget ended first."""
        if self.forecast is None:
            return None
        limit, forecast = math.log1p(until.for_pipeline(self.pipeline)), self.forecast
        return next((n for n in range(2, most + 1) if significance.detection_factor(n - 1 + forecast.df, self.family)
                     * math.sqrt(forecast.pair_variance / n) <= limit), None)

    def forecast_text(self, until: UntilTarget) -> str:
        if self.refused is not None:
            return f"; {self.refused}"
        if self.forecast is None:
            return ""
        needed = self.pairs_needed(until)
        expected = f"about {needed} pairs" if needed else "more than 50 pairs"
        return (f"; the calibration expects {expected} at {self.forecast.rounds} rounds a worker: "
                f"{math.expm1(math.sqrt(self.forecast.per_process_variance)):.1%} of a pair's spread is per "
                f"process, which more rounds do not remove")

    @property
    def judged(self) -> bool:
        """From MIN_PAIRS_FOR_UNTIL pairs, or from two where the calibration supplies the degrees of freedom."""
        return self.pairs >= (MIN_PAIRS_CALIBRATED if self.calibrated else MIN_PAIRS_FOR_UNTIL)

    def reached(self, until: UntilTarget) -> bool:
        return self.judged and self.detectable is not None and self.detectable <= until.for_pipeline(self.pipeline)


# --until judges the detectable change only from this many pairs on: with two, a t-test on pair means has one
# degree of freedom and its detectable change is ten times the pairs' spread, so stopping there is by chance.
MIN_PAIRS_FOR_UNTIL = 3
# ... or from two, when the row's verdict pooled this machine's calibration: its degrees of freedom are then the
# calibration's plus one, and the F-test that guards the pooling has a pair spread to check.
MIN_PAIRS_CALIBRATED = 2


def rounds_wanted(calibration: Calibration | None, until: UntilTarget | None, family: int = 1
                   ) -> Callable[[dict, int], int | None] | None:
    """The Scheduler's ``rounds_wanted`` for an ``--until`` run with a calibration: each row's rounds from its
    calibrated noise (``rounds_for_size``, at the gate's level over the ``family`` rows the run judges); None (the
    rounds ``--round-time`` gives) otherwise."""
    if calibration is None or until is None:
        return None

    def wanted(row: dict, default: int) -> int | None:
        identity = row["identity"]
        noise = calibration.noise_at(row["machine"], row["torch_version"], identity, host_memory=row.get("host_memory"))
        if noise is None or noise.compiled_code != row.get("compiled_code"):  # the verdict would not use it
            return None
        return rounds_for_size(noise, until.for_pipeline(identity.get("pipeline")), default, family)

    return wanted


# Rows are sized to reach a fraction of their size, so that this run's own pairs, pooled with the calibration's,
# may spread a little more than it did and still get there. A row planned for two pairs is one that reaches its
# size anyway and is only given fewer rounds: planned to half its size, as missing costs a whole pair.
TWO_PAIR_MARGIN = 0.5
THREE_PAIR_MARGIN = 0.9


def rounds_for_size(noise: Noise, size: float, default: int, family: int = 1) -> int | None:
    """How many rounds a worker should time of a row whose calibration records its round noise, so that the
    row's smallest detectable change reaches ``size`` in few pairs; None when the calibration cannot say.

    A pair's variance is the per-process part plus round noise over the rounds (``Noise.pair_variance``); after
    n pairs pooled with the calibration, the detectable change is ``detection_factor(df, family) * sqrt(variance /
    n)`` (significance.py: at the gate's level over the ``family`` rows judged together). So:

    - a row that reaches TWO_PAIR_MARGIN of its size in MIN_PAIRS_CALIBRATED pairs with no more than ``default``
      rounds gets the rounds that does (H200: resnet18_cifar resident and tuned, 33 and 113 rounds a worker by
      ``--round-time``, were sized to 5 and reached 2.0% and 2.8% in two pairs);
    - else the rounds that reach THREE_PAIR_MARGIN of it in MIN_PAIRS_FOR_UNTIL pairs, no fewer than ``default``
      (H200: mnist_mlp seed, nearly all round noise, 15 where ``--round-time`` gives 10);
    - but never more than the rounds at which its round noise is down to its per-process part (the balance), no
      fewer than ``default``: past it, halving the rest of a pair's variance costs doubling its rounds, while a
      pair more costs a start-up and a build. So a row whose per-process part alone is more than three pairs can
      average, or nearly so, gets more pairs of fewer rounds (H200, rounds pinned: mnist_mlp resident, 1.9% per
      process, round noise 11%: 49 rounds a worker, where reaching in three pairs asked 8,301 and got the cap,
      200, 31 s a worker).
    """
    per_process = noise.per_process_variance()
    if per_process is None:
        return None
    round_variance = noise.round_variance()  # a pair's round noise at one round

    def room(pairs: int, target: float) -> float:
        """The round noise a pair may have so that ``pairs`` pairs detect ``target``."""
        factor = significance.detection_factor(pairs - 1 + noise.pair_df, family)
        return pairs * (math.log1p(target) / factor) ** 2 - per_process

    two = room(MIN_PAIRS_CALIBRATED, TWO_PAIR_MARGIN * size)
    if two > 0 and math.ceil(round_variance / two) <= default:
        return max(1, math.ceil(round_variance / two))
    balance = math.ceil(round_variance / per_process) if per_process > 0 else None
    three = room(MIN_PAIRS_FOR_UNTIL, THREE_PAIR_MARGIN * size)
    if three > 0:
        wanted = math.ceil(round_variance / three)
        return max(default, wanted if balance is None else min(wanted, balance))
    return max(default, balance) if balance is not None else default


def progress_by_row(runs: list[Run], calibration: Calibration | None,
                    family: int | None = None) -> dict[str, RowProgress]:
    """Each row's smallest detectable change in ``runs`` (one per environment, merged from the pairs so far): the
    worst over each environment against the first (None where a row cannot be judged), with this machine's
    calibration where it has the row, at the gate's level over ``family`` rows (default: every row of the run)."""
    if len(runs) < 2 or not runs[0].rows or min(len(row.processes) for row in runs[0].rows) < 2:
        return {}
    family = family or len(runs[0].rows)
    found: dict[str, RowProgress] = {}
    for row in runs[0].rows:
        worst: float | None = 0.0
        calibrated = True
        forecast, refused = None, None
        for other_run in runs[1:]:
            other = next((candidate for candidate in other_run.rows if candidate.test == row.test), None)
            noise = None if calibration is None or other is None else \
                calibration.noise_between(runs[0], row, other_run, other)
            verdict = None if other is None else significance.judge(row, other, noise=noise).for_family(family)
            detectable = None if verdict is None else verdict.detectable
            calibrated = calibrated and verdict is not None and verdict.pooled
            worst = None if detectable is None or worst is None else max(worst, detectable)
            if noise is not None and verdict is not None and not verdict.pooled and verdict.calibration:
                refused = refused or f"{_name(other_run)} against {_name(runs[0])}: {verdict.calibration}"
            per_process = noise.per_process_variance() if verdict is not None and verdict.pooled else None
            if per_process is not None:
                rounds = round(statistics.median(len(times) for times in other.processes))
                candidate = Forecast(noise.pair_variance(rounds), noise.pair_df, rounds, per_process)
                if forecast is None or candidate.pair_variance > forecast.pair_variance:
                    forecast = candidate
        found[row.test] = RowProgress(row.test, row.extra.get("pipeline"),
                                      len(row.processes), worst, calibrated, forecast, family, refused)
    return found


def _name(run: Run) -> str:
    return run.environment or run.path.stem


def progress_lines(progress: dict[str, RowProgress], pairs: int, until: UntilTarget | None) -> str:
    marks = []
    for row in progress.values():
        figure = "n/a" if row.detectable is None else significance.size_text(row.detectable)
        reached = " (reached)" if until is not None and row.reached(until) else ""
        early = "" if row.judged else f" (judged from pair {MIN_PAIRS_FOR_UNTIL})"
        marks.append(f"{row.test.removeprefix('test_')} {figure}{reached}{early}")
    family = next(iter(progress.values())).family if progress else 1
    level = f" (at the gate's level over {family} rows)" if family > 1 else ""
    return f"    after {pairs} pairs, smallest detectable change{level}: " + "; ".join(marks)


def budget_advice(calibrated: bool, pairs: int, spent: float, pair_seconds: float) -> str:
    """A line for a user whose budget ran out after ``pairs`` pairs, too few for --until to judge (else "");
    ``calibrated``: whether the rows' verdicts pool this machine's calibration (then two pairs judge);
    ``pair_seconds``: what the next pair would take (the time spent also holds what came before the first pair,
    such as compiling an environment's code on the cpu); 0 where no pair's record says, then the mean pair."""
    minimum = MIN_PAIRS_CALIBRATED if calibrated else MIN_PAIRS_FOR_UNTIL
    if pairs >= minimum:
        return ""
    pair_seconds = pair_seconds or spent / pairs
    return (f"\n    --until judges from {minimum} pairs on{' with a calibration' if calibrated else ''}, and at "
            f"{clock(pair_seconds)} a pair this budget holds {pairs}: give --budget "
            f"{math.ceil((spent + (minimum - pairs) * pair_seconds) / 60)}m or more, or fewer rows (-k)")


def report(progress: dict[str, RowProgress], until: UntilTarget, pairs: int, spent: float) -> str:
    if not progress:
        return (f"--until {until.describe()}: not judged: {pairs} pair(s) measured ({clock(spent)}), and a "
                f"smallest detectable change needs at least 2")
    reached = [row for row in progress.values() if row.reached(until)]
    missed = [row for row in progress.values() if not row.reached(until)]
    family = next(iter(progress.values())).family
    level = f", at the gate's level over {family} rows" if family > 1 else ""
    lines = [f"--until {until.describe()}{level}: {len(reached)} of {len(progress)} rows reached it in {pairs} "
             f"pairs ({clock(spent)} measured)"]
    lines += [f"    reached: {row.test} ({significance.size_text(row.detectable)} from {row.pairs} pairs)"
              for row in reached]
    lines += [f"    not reached: {row.test} "
              f"({'not judged' if row.detectable is None else significance.size_text(row.detectable)}"
              f" from {row.pairs} pairs, asked {percent(until.for_pipeline(row.pipeline))}{row.forecast_text(until)})"
              for row in missed]
    return "\n".join(lines)


def clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s"


