"""Is B faster than A, is the difference real, and could this data have seen a change of the size that matters?

**The unit is the process.** Rounds inside one process move together (memory layout, compile caches, the kernels
autotuning chose, the host's state that minute): on the machines this project runs on, separate processes of the
same code differed by 5-35% while their rounds differed by 1-2% (docs/comparing.md). Treating rounds as independent
samples calls that process-to-process difference "significant" every time. So, as pyperf does with its worker
processes, each process contributes one value, the median of its rounds, and the test is on those values.

**Which test.** Welch's t-test on the logarithms of the per-process medians. The log makes the effect a ratio
(what "1.10x slower" means) and the spread of timings closer to symmetric; Welch does not assume both sides equally
noisy. It was chosen over Mann-Whitney U on the process medians because with the few processes a GPU run can
afford (3 a side) Mann-Whitney cannot reach p < 0.05 at all (its smallest two-sided p for 3 vs 3 is 0.1), and over
a hierarchical bootstrap because a bootstrap of 3-5 values is no more trustworthy and harder to explain.

**How much it can see.** From the pooled spread of the process medians, the smallest change this data could detect
(two-sided 5% test, 80% power) is reported with every row. A row whose data cannot see a change of the threshold's
size and shows no significant change says so ("inconclusive") instead of claiming there was none: run more
processes.

**Interleaved runs** (``devicebench run --env A=.. --env B=..``, interleave.py) are judged as pairs. Each worker
pair ran A's and B's rounds alternately (A B B A ...), so round k of A and round k of B ran next to each other and
saw the same machine. The model, on log times: round k of pair i on side s is
``mu + delta*[s=B] + p_is + m_ik + e_isk``, where ``m_ik`` is the machine's state at that moment (drift, shared
by the two adjacent rounds), ``p_is`` the worker's own state (what it compiled, its memory layout: fixed for the
worker's life) and ``e`` the round's own noise. Within a pair, the median over k of ``log B_k - log A_k`` removes
``m`` and estimates ``delta + p_iB - p_iA``; across pairs those estimates vary by the per-process state and what
is left of the round noise. The test is a one-sample t-test of the pair estimates against 0 (n pairs, n-1
degrees of freedom): the pair is the unit, so a per-process offset widens the interval instead of making an A/A
significant, while drift no longer does. (Pooling rounds across pairs would have more degrees of freedom but
calls every per-process offset a change; a mixed model fitted by REML gives the same estimate and interval as
the pair means when the design is balanced, as it is here, and is harder to explain.) The median of the round
differences, rather than their mean, keeps one disturbed round from moving its pair. The smallest detectable
change uses the same t with n-1 degrees of freedom.

**When a change counts.** A change is reported when it is significant and a change of the threshold's size is
not ruled out: the far end of its 95% confidence interval reaches the threshold. The point estimate alone would
not do: a real change of exactly the threshold's size (the planted 5% slowdown) has its estimate under the
threshold half the time, so requiring the estimate to pass it would miss it that often, and a gate built on it
would pass half the regressions it exists for. A significant change whose whole interval lies inside the
threshold is real but smaller than what was asked about ("below threshold"). Single-process verdicts have no
interval and keep the estimate.

**Calibrated noise** (calibration.py: an A/A of worker pairs measured once on this machine, torch version and
row). A t-test on three pairs has two degrees of freedom, so its detectable change is about five times the pairs'
spread, and most of that factor is not knowing the spread. When the row is calibrated, the pairs' variance is
pooled with the calibrated one, ``((n-1) s^2 + df_c s_c^2) / (n - 1 + df_c)`` on ``n - 1 + df_c`` degrees of
freedom: the classic pooled-variance t-test, which assumes the spread is the machine's and the same now as then.
The calibrated variance is the one a pair has at this run's rounds (``Noise.pair_variance``: the A/A's per-process
part plus its round noise over the rounds timed), so a run that times three times the A/A's rounds of a row whose
spread is round noise is judged with a third of its round noise, not with the A/A's. (A calibration written
before round noise was recorded holds only at about its own rounds.)
That assumption is checked, not trusted: when this run's pairs spread significantly more than the calibration's
(one-sided F-test at 5%), or its workers timed fewer than half the rounds of a calibration without round noise,
or a compiled row's workers came by their compiled code otherwise than the calibration's did (kept against
compiled anew: ``Noise.unlike_compiled_code``), the calibration is not used and the noise line says why. A run
whose pairs spread significantly less than the calibration's still pools it (judged alone, such runs are the ones
whose t is large by chance: in 300 calibrated A/As that raised the flags from 20 to 24), and the line says, at 1%
(``SHORTFALL_ALPHA``), that the calibration may be of a busier machine.

**Single-process runs** (every ``pytest benchmarks`` run) have no process-to-process spread of their own. With a
calibration, one process a side is judged against the calibrated spread of one process's median from another's
(``process_log_sd``, the same for both sides): a t-test of the log ratio with standard error ``sqrt(2)
process_log_sd`` on the calibration's degrees of freedom. A median of fewer than half the rounds the calibration's
workers timed is noisier than what it measured, so such a calibration is not used (``devicebench calibrate
--round-time 0`` runs plain processes one after another, timed as a plain pytest run is: calibration.py). Nor is
one whose process spread has fewer than 10 degrees of freedom (``MIN_PROCESS_DF``: 11 plain processes, or 6 worker
pairs): processes' medians fall into modes (where the OS put the main thread, how the GPU clocked), and a mode that
three processes in ten land in escapes four processes a quarter of the time (0.7^4 + 0.3^4), twelve 1.4% (H200,
mnist_mlp seed: a calibration of 4 processes within 2.5%, then two plain runs of the same code 450 and 655 ms an
epoch, flagged 1.46x at p=0.009). Without one, the rounds inside a process
cannot say whether the processes differ (they move together), so no change is claimed unless it is beyond
``SINGLE_PROCESS_FLOOR`` (2x), more than any difference between processes of the same code measured on a quiet
machine (at most 1.45x); the verdict says what would settle it. A change beyond that floor whose rounds differ
significantly is claimed with a calibration too: a calibration of a few pairs on a drifting machine can measure a
spread so wide that a planted doubling would pass its test. Mann-Whitney U on the rounds still supplies the p-value
shown.

**The gate's answer is one answer for the whole run** (``holm``). Each row's verdict is a test at 5%, so an A/A of
six rows flags some row about one time in four (1 - 0.95^6) while nothing changed. "Did the upgrade slow my
training?" is a yes or no at 5% for the run, so ``compare --fail-on-regression`` fails only on the slowdowns that
survive Holm's step-down correction over every row it judged (the smallest p against 5%/m, the next against
5%/(m-1), ...; it controls the chance of any false alarm at 5% and never flags less than Bonferroni). A row that is
significant alone but not after the correction is printed as such. Planted 5% slowdowns survive it
(docs/comparing.md).

**The gate's power.** A smallest detectable change promises that the gate flags a change of that size with 80%
power, so where several rows are judged together it is computed at the level the gate applies to a row: two-sided
5%/m over the m rows judged (``detection_factor``'s ``family``). That is the level of Holm's first step, the one a
single changed row among m must pass, and every later step is easier, so Holm's power for such a row is at least
this one (Bonferroni's level: the conservative bound, not an approximation that may promise too much). compare
restates every verdict at its family (``Verdict.for_family``), and an ``--until`` run sizes its rows at the number
of rows it runs, so "reached 5%" means the gate would flag a 5% change on that row, 80 times in 100.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import statistics
from dataclasses import dataclass

from devicebench.calibration import pair_estimates
from devicebench.noise import Noise
from devicebench.results import Row
from devicebench.threshold import DEFAULT_THRESHOLD, Threshold, percent


def _stats():
    """scipy.stats, imported on first use: it takes ~1 s to import on a 2-core VM, and every benchmark process
    imports this module (the plugin's compare hooks) though most judge nothing."""
    from scipy import stats

    return stats


def _optimize():
    from scipy import optimize

    return optimize


ALPHA = 0.05
SHORTFALL_ALPHA = 0.01  # "spread less than the calibration", said per row: of nine A/A rows at 5%, a third of runs
POWER = 0.80

# Single-process comparisons without a calibration claim only changes beyond this ratio ("Single-process runs").
SINGLE_PROCESS_FLOOR = 2.0
# A calibration judges single processes once its process spread has this many degrees of freedom (11 processes).
MIN_PROCESS_DF = 10


@dataclass(frozen=True)
class Verdict:
    ratio: float  # candidate time / baseline time: > 1 is slower
    p_value: float | None
    threshold: float
    processes: tuple[int, int]  # (baseline, candidate)
    spread: float | None = None  # pooled standard deviation between processes, as a fraction
    detectable: float | None = None  # smallest change this data could detect, as a fraction
    interval: tuple[float, float] | None = None  # 95% confidence interval of the ratio (process-level verdicts)

    rounds_p_value: float | None = None  # one process a side: Mann-Whitney U on the rounds (for the 2x floor)
    paired: bool = False  # judged as interleaved worker pairs (processes[0] == processes[1] pairs)
    calibration: str | None = None  # how the calibrated noise was used, or why it was not; None: no calibration
    pooled: bool = False  # the calibrated spread was pooled with this run's own (its degrees of freedom added)
    own_spread: float | None = None  # worker pairs: this run's own spread between pairs, before any pooling
    # A change significant alone that did not survive Holm's correction over this many rows judged with it (0: it
    # survived, or it was judged alone); set by compare.correct_for_rows, said by describe().
    not_after_holm: int = 0
    # What the detectable change is computed from (log scale), so that it can be restated at the gate's level.
    log_standard_error: float | None = None
    df: float | None = None
    family: int = 1  # rows judged together: ``detectable`` is at the gate's level over them (``for_family``)

    def for_family(self, family: int) -> "Verdict":
        """This verdict with its smallest detectable change at the level the gate tests this row against when
        ``family`` rows are judged together (``detection_factor``'s ``family``)."""
        if self.log_standard_error is None or self.df is None or family == self.family:
            return dataclasses.replace(self, family=family)
        detectable = math.expm1(detection_factor(self.df, family) * self.log_standard_error)
        return dataclasses.replace(self, detectable=detectable, family=family)

    @property
    def process_level(self) -> bool:
        return min(self.processes) >= 2

    @property
    def significant(self) -> bool:
        return self.p_value is not None and self.p_value < ALPHA

    @property
    def beyond_threshold(self) -> bool:
        """Could the change be of the threshold's size? The interval's far end reaches it ("When a change
        counts" above); without an interval (a single process), the estimate does."""
        limit = math.log1p(self.threshold)
        if self.interval is None:  # one process a side, uncalibrated: only a change beyond any measured noise
            return abs(math.log(self.ratio)) >= max(limit, math.log(SINGLE_PROCESS_FLOOR))
        low, high = (math.log(bound) for bound in self.interval)
        return high >= limit if self.ratio >= 1 else low <= -limit

    @property
    def beyond_floor(self) -> bool:
        """One process a side, a change beyond SINGLE_PROCESS_FLOOR whose rounds differ significantly: claimed
        with or without a calibration (a calibration's wide spread, measured with few degrees of freedom, never
        makes a 2x change pass)."""
        return (not self.process_level and self.rounds_p_value is not None and self.rounds_p_value < ALPHA
                and abs(math.log(self.ratio)) >= max(math.log1p(self.threshold), math.log(SINGLE_PROCESS_FLOOR)))

    @property
    def is_change(self) -> bool:
        return (self.significant and self.beyond_threshold) or self.beyond_floor

    @property
    def is_regression(self) -> bool:
        return self.is_change and self.ratio > 1

    @property
    def inconclusive(self) -> bool:
        """No change found, but the processes spread too much to have seen one of the threshold's size."""
        return not self.is_change and self.detectable is not None and self.detectable > self.threshold

    @property
    def uncalibrated_single(self) -> bool:
        return not self.process_level and self.interval is None

    def noise(self) -> str:
        calibrated = "" if self.calibration is None else f"; {self.calibration}"
        if self.uncalibrated_single:
            why = self.calibration or "no calibration of this row on this machine"
            return (f"one process a side and {why}: only a change beyond {SINGLE_PROCESS_FLOOR:.0f}x is claimed; "
                    f"run devicebench calibrate --round-time 0 once, or devicebench run for several processes a "
                    f"side")
        detectable = f"smallest detectable change {size_text(self.detectable)}{self._family_text()}"
        if not self.process_level:
            return f"one process a side, {detectable}{calibrated}"
        if self.paired:
            spread = (f"{self.own_spread:.1%} ({self.spread:.1%} pooled with the calibration's)"
                      if self.pooled and self.own_spread is not None else f"{self.spread:.1%}")
            return (f"{self.processes[0]} worker pairs, rounds alternated; spread between pairs {spread}, "
                    f"{detectable}{calibrated}")
        return f"{self.processes[0]} vs {self.processes[1]} processes, spread {self.spread:.1%}, {detectable}"

    def _family_text(self) -> str:
        return "" if self.family <= 1 else f" at the gate's level over {self.family} rows"

    def describe(self) -> str:
        p = "n/a" if self.p_value is None else f"{self.p_value:.3g}"
        if self.is_change and not (self.significant and self.beyond_threshold):  # the floor's claim alone
            text = (f"{speed(self.ratio)} (beyond {SINGLE_PROCESS_FLOOR:.0f}x, rounds p={self.rounds_p_value:.3g}; "
                    f"the calibrated noise alone: p={p}{self._interval_text()})")
        elif self.is_change:
            text = f"{speed(self.ratio)} (p={p}{self._interval_text()})"
            if self.not_after_holm:
                text += f" (not after Holm's correction over the {self.not_after_holm} rows judged)"
        elif self.uncalibrated_single:
            without = "a calibration it can use" if self.calibration else "a calibration"
            beyond = max(self.ratio, 1 / self.ratio) > SINGLE_PROCESS_FLOOR
            text = (f"no verdict from one process a side without {without}: {speed(self.ratio)}, beyond "
                    f"{SINGLE_PROCESS_FLOOR:.0f}x, but its rounds do not differ significantly (p={p})" if beyond else
                    f"no verdict below {SINGLE_PROCESS_FLOOR:.0f}x from one process a side without {without} "
                    f"({speed(self.ratio)}, rounds p={p})")
        elif self.inconclusive:
            text = (f"no significant change, inconclusive: processes spread too much to detect a "
                    f"{percent(self.threshold)} change ({speed(self.ratio)}, p={p})")
        else:
            reason = "below threshold" if self.significant else "not significant"
            text = f"no significant change ({reason}; {speed(self.ratio)}, p={p}{self._interval_text()})"
        if self.process_level:
            return text
        return f"{text} [single process{'' if self.uncalibrated_single else ', calibrated noise'}]"

    def _interval_text(self) -> str:
        return "" if self.interval is None else f", 95% interval {self.interval[0]:.3f}-{self.interval[1]:.3f}x"


def size_text(fraction: float) -> str:
    """A change's size as a percentage; past 1000% (one or two pairs on a t of one degree of freedom give
    billions) only that, as no figure there means more than "these data cannot judge"."""
    return f"{fraction:.1%}" if fraction <= 10 else "over 1000%"


def speed(ratio: float) -> str:
    return f"{1 / ratio:.2f}x faster" if ratio < 1 else f"{ratio:.2f}x slower"


def judge(baseline: Row, candidate: Row, threshold: float | Threshold = DEFAULT_THRESHOLD,
          noise: Noise | None = None) -> Verdict:
    """Compare two rows of the same identity (or, in the devices view, the same configuration) at the threshold of
    the candidate's pipeline; ``noise``: the row's calibration on the candidate's machine and torch version, where
    one exists."""
    unlike = None if noise is None else noise.unlike_compiled_code(candidate)
    size = Threshold.of(threshold).for_pipeline(candidate.pipeline)
    verdict = _judge(baseline, candidate, size, None if unlike else noise)
    return verdict if unlike is None else dataclasses.replace(verdict, calibration=unlike)


def _judge(baseline: Row, candidate: Row, threshold: float, noise: Noise | None) -> Verdict:
    common = sorted(baseline.pairs.keys() & candidate.pairs.keys())
    if len(common) >= 2:
        return _paired([baseline.pairs[key] for key in common], [candidate.pairs[key] for key in common],
                       threshold, noise, {interleave_id for interleave_id, _ in common})
    base, cand = baseline.process_medians, candidate.process_medians
    counts = (len(base), len(cand))
    if min(counts) >= 2:
        return _process_level(base, cand, threshold)
    ratio = candidate.median_seconds / baseline.median_seconds
    a, b = baseline.all_seconds, candidate.all_seconds
    p_value = None
    if len(a) >= 2 and len(b) >= 2:
        p_value = float(_stats().mannwhitneyu(a, b, alternative="two-sided").pvalue)
    rounds = min(len(a), len(b))
    # A median of fewer rounds than the calibration's workers timed is noisier than it measured: not used.
    unused = None if noise is None else _single_unusable(noise, rounds)
    if noise is not None and unused is None:
        return _single_calibrated(ratio, counts, threshold, noise, p_value)
    detectable = SINGLE_PROCESS_FLOOR - 1  # what it can claim without a calibration
    return Verdict(ratio, p_value, threshold, counts, detectable=detectable, calibration=unused,
                   rounds_p_value=p_value)


def _single_unusable(noise: Noise, rounds: int) -> str | None:
    """Why a calibration cannot judge one process a side (module docstring, "Single-process runs"), else None."""
    if not noise.process_log_sd:
        return "calibration not used: it has no spread between processes"
    if rounds < noise.rounds_per_worker / 2:
        return (f"calibration not used: {rounds} rounds a process against its {noise.rounds_per_worker} "
                f"(calibrate with --round-time 0)")
    if noise.process_df < MIN_PROCESS_DF:
        return (f"calibration not used: its spread between processes rests on {noise.process_df} degrees of "
                f"freedom and one process a side needs {MIN_PROCESS_DF} ({MIN_PROCESS_DF + 1} plain processes: "
                f"devicebench calibrate --round-time 0 runs 12, and pools with what it ran before)")
    return None


def _single_calibrated(ratio: float, counts: tuple[int, int], threshold: float, noise: Noise,
                       rounds_p_value: float | None) -> Verdict:
    """One process a side against the calibrated spread of one process's median from another's."""
    log_ratio, df = math.log(ratio), noise.process_df
    standard_error = math.sqrt(2) * noise.process_log_sd
    p_value = float(2 * _stats().t.sf(abs(log_ratio) / standard_error, df))
    detectable_log = detection_factor(df) * standard_error
    return Verdict(ratio, p_value, threshold, counts, spread=math.expm1(noise.process_log_sd),
                   detectable=math.expm1(detectable_log), interval=_interval(log_ratio, standard_error, df),
                   rounds_p_value=rounds_p_value, log_standard_error=standard_error, df=df,
                   calibration=f"one process's median from another's {math.expm1(noise.process_log_sd):.1%}, "
                               f"{noise.describe()}")


def ratio_of_processes(base: list[float], cand: list[float], threshold: float = DEFAULT_THRESHOLD) -> Verdict:
    """The ratio of two sets of independent values, one per process (or launch), with Welch's interval on their
    logs: what a verdict of processes is made of, for any per-process figure (scaling.py's samples/s)."""
    return _process_level(base, cand, threshold)


def _process_level(base: list[float], cand: list[float], threshold: float) -> Verdict:
    log_a, log_b = [math.log(v) for v in base], [math.log(v) for v in cand]
    ratio = math.exp(statistics.fmean(log_b) - statistics.fmean(log_a))
    var_a, var_b = statistics.variance(log_a), statistics.variance(log_b)
    if var_a == 0 and var_b == 0:  # identical values on each side (planted data): equal means nothing varies
        p_value = 1.0 if ratio == 1 else 0.0
    else:
        p_value = float(_stats().ttest_ind(log_b, log_a, equal_var=False).pvalue)
    n_a, n_b = len(log_a), len(log_b)
    pooled = math.sqrt(((n_a - 1) * var_a + (n_b - 1) * var_b) / (n_a + n_b - 2))
    df = n_a + n_b - 2
    pooled_error = pooled * math.sqrt(1 / n_a + 1 / n_b)
    detectable_log = detection_factor(df) * pooled_error
    # Welch's interval, to match its test: standard error and Welch-Satterthwaite degrees of freedom.
    se_a, se_b = var_a / n_a, var_b / n_b
    welch_df = (se_a + se_b) ** 2 / (se_a ** 2 / (n_a - 1) + se_b ** 2 / (n_b - 1)) if se_a + se_b > 0 else df
    return Verdict(ratio, p_value, threshold, (n_a, n_b), spread=math.expm1(pooled),
                   detectable=math.expm1(detectable_log),
                   interval=_interval(math.log(ratio), math.sqrt(se_a + se_b), welch_df),
                   log_standard_error=pooled_error, df=df)


def _paired(base: list[list[float]], cand: list[list[float]], threshold: float, noise: Noise | None,
            sources: set[str]) -> Verdict:
    """The interleaved-pairs model above: per pair the median log ratio of adjacent rounds, then a t-test, on the
    pairs' spread pooled with the calibrated one where it applies ("Calibrated noise")."""
    estimates = pair_estimates(base, cand)
    n = len(estimates)
    mean = statistics.fmean(estimates)
    sd = statistics.stdev(estimates)
    variance, df = sd ** 2, n - 1
    used = None
    if noise is not None and sources & set(noise.sources):
        used = "calibration not used: these are its own pairs"
    elif noise is not None and noise.pair_log_sd is not None and noise.pair_df > 0:
        rounds = statistics.median(min(len(a), len(b)) for a, b in zip(base, cand))
        calibrated = noise.pair_variance(rounds)
        if calibrated is None:
            used = (f"calibration not used: {rounds:.0f} rounds per worker against its {noise.rounds_per_worker} "
                    f"(give the same --round-time)")
        elif (excess_p := float(_stats().f.sf(variance / calibrated, n - 1, noise.pair_df))
                if calibrated > 0 else 0.0) < ALPHA:
            used = (f"calibration not used: these pairs spread {math.expm1(sd):.1%}, significantly more than the "
                    f"calibrated {math.expm1(math.sqrt(calibrated)):.1%} (p={excess_p:.2g}); recalibrate if the "
                    f"machine changed")
        else:
            # Pooled also when these pairs spread significantly less: judging them alone then would flag A/As
            # beyond 5% (a low spread by chance is when their t is large), so the line only says why it is blunt.
            shortfall_p = float(_stats().f.cdf(variance / calibrated, n - 1, noise.pair_df))
            variance = ((n - 1) * variance + noise.pair_df * calibrated) / (n - 1 + noise.pair_df)
            df = n - 1 + noise.pair_df
            at_rounds = "" if noise.round_log_sd is None else f" at {rounds:.0f} rounds"
            used = (f"pooled with the calibrated spread{at_rounds} {math.expm1(math.sqrt(calibrated)):.1%}, "
                    f"{noise.describe()}")
            if shortfall_p < SHORTFALL_ALPHA:
                used += (f"; these pairs alone spread significantly less (p={shortfall_p:.2g}): the calibration "
                         f"was measured on a busier machine? recalibrate on a quiet one for a sharper verdict")
    standard_error = math.sqrt(variance / n)
    if standard_error == 0:  # identical estimates (planted data): no spread to test against
        p_value = 1.0 if mean == 0 else 0.0
    else:
        p_value = float(2 * _stats().t.sf(abs(mean) / standard_error, df))
    detectable_log = detection_factor(df) * standard_error
    return Verdict(math.exp(mean), p_value, threshold, (n, n), spread=math.expm1(math.sqrt(variance)),
                   own_spread=math.expm1(sd),
                   detectable=math.expm1(detectable_log), paired=True,
                   interval=_interval(mean, standard_error, df), calibration=used, pooled=df > n - 1,
                   log_standard_error=standard_error, df=df)


@functools.lru_cache(maxsize=4096)
def detection_factor(df: float, family: int = 1) -> float:
    """The smallest detectable change of a t-test on ``df`` degrees of freedom, in standard errors: the shift at
    which a two-sided test at the level the gate applies to one row of ``family`` judged together (ALPHA /
    family, "The gate's power" above) rejects with probability POWER, from the noncentral t distribution
    (``t_crit + t_power``, the usual shortcut, promises 80% where small samples give 74%):
    ``detectable_log = detection_factor(df, family) * standard_error``."""
    stats = _stats()
    critical = float(stats.t.ppf(1 - ALPHA / (2 * max(1, family)), df))

    def power(shift: float) -> float:  # the far tail's share (under ALPHA / 2 / family) is left out
        return float(stats.nct.sf(critical, df, shift))

    shortcut = critical + float(stats.t.ppf(POWER, df))
    return float(_optimize().brentq(lambda shift: power(shift) - POWER, critical, 2 * shortcut))


def _interval(log_ratio: float, standard_error: float, df: float) -> tuple[float, float]:
    """The two-sided 95% confidence interval of a ratio, from its log's estimate and standard error."""
    half = _stats().t.ppf(1 - ALPHA / 2, df) * standard_error
    return math.exp(log_ratio - half), math.exp(log_ratio + half)


def holm_family(verdicts: list[Verdict]) -> list[int]:
    """Indexes of the verdicts Holm's correction counts (``holm``)."""
    return [index for index, verdict in enumerate(verdicts)
            if verdict.p_value is not None and not verdict.uncalibrated_single]


def holm(verdicts: list[Verdict], alpha: float = ALPHA) -> set[int]:
    """Indexes of the verdicts whose change survives Holm's step-down correction over all of them (module docstring,
    "The gate's answer"). The family is every verdict tested against a measured noise (worker pairs, processes, a
    calibration); one process a side without a calibration claims only changes beyond the 2x floor, whose rounds'
    p-value says nothing of the noise between processes, so such a claim stays as it is, outside the family."""
    members = set(holm_family(verdicts))
    family = sorted((verdicts[index].p_value, index) for index in members)
    kept = {index for index, verdict in enumerate(verdicts) if verdict.is_change and index not in members}
    for rank, (p_value, index) in enumerate(family):
        if p_value > alpha / (len(family) - rank):
            break
        if verdicts[index].is_change:
            kept.add(index)
    return kept
