"""One row's calibrated noise (calibration.py keeps it per machine, torch version and row) and what it says about
a pair's estimate at a given number of rounds: the model both the verdicts (significance.py) and ``--until``'s
round sizing (until.py) rest on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from devicebench.results import Row


@dataclass(frozen=True)
class Noise:
    """One row's calibrated noise (logs of seconds; ``*_df``: the degrees of freedom each was estimated with)."""

    pair_log_sd: float | None  # None in files written when a single pair gave no spread
    pair_df: int
    process_log_sd: float | None
    process_df: int
    rounds_per_worker: int  # median timed rounds per worker: a pair's spread depends on it
    measured: str  # when, ISO date
    how: str  # what was run
    sources: tuple[str, ...] = ()  # interleave ids of the A/A runs it came from: their own pairs never use it
    pairs: int = 0
    compiled_code: str | None = None  # a compiled row's workers' --compile-cache (compiled_code()); None: not compiled
    round_log_sd: float | None = None  # a round's B/A about its pair's (None: written before it was recorded)
    round_df: int = 0
    processes: int = 0  # plain processes measured (add_processes); 0 for a calibration of worker pairs

    def describe(self) -> str:
        if not self.pairs:
            return f"calibrated {self.measured[:10]} from {self.processes} plain processes"
        return f"calibrated {self.measured[:10]} from {self.pairs} pairs"

    def pair_variance(self, rounds: float) -> float | None:
        """The variance of a pair's estimate (log B/A) when each worker times ``rounds`` rounds; None when this
        calibration cannot say (no pair spread, or fewer rounds than half its own and no round noise recorded).

        The model: a pair's estimate is its workers' own difference (fixed for their life, the same at any number
        of rounds: the per-process part) plus the median of its rounds' noise, whose variance falls as 1/rounds
        (``round_variance``). The A/A gives the sum at its rounds (``pair_log_sd``) and the round noise
        (``round_log_sd``); the difference is the per-process part. At the A/A's own rounds this is always the
        pair spread it measured; stored A/As bear the model out (docs/comparing.md). Without ``round_log_sd`` the
        calibration holds only at about its own rounds."""
        if self.pair_log_sd is None:
            return None
        per_process = self.per_process_variance()
        if per_process is None:
            return self.pair_log_sd ** 2 if rounds >= self.rounds_per_worker / 2 else None
        return per_process + self.round_variance() / max(rounds, 1)

    def round_variance(self) -> float | None:
        """A pair's round-noise variance at one round a worker (divide by the rounds); None if not recorded.

        From the rounds' spread as a median of independent normal rounds has it, but never more than the pairs
        showed: rounds whose times jump between two levels, on both workers at once, have a standard deviation far
        above what moves the median of their ratios (docs/comparing.md). So the pair spread measured caps it, at
        the A/A's rounds."""
        if self.pair_log_sd is None or self.round_log_sd is None or self.round_df <= 0:
            return None
        return min(median_variance(self.round_log_sd, 1), self.pair_log_sd ** 2 * self.rounds_per_worker)

    def per_process_variance(self) -> float | None:
        """The part of a pair's variance that more rounds do not shrink (``pair_variance``); None if unknown."""
        round_variance = self.round_variance()
        if round_variance is None:
            return None
        return max(0.0, self.pair_log_sd ** 2 - round_variance / self.rounds_per_worker)

    def unlike_compiled_code(self, row: Row) -> str | None:
        """Why this calibration does not describe ``row``'s noise, where their compiled code came about differently.

        Workers that keep one environment's compiled code share it, so their pairs do not vary by what a compile
        produces; workers that compile anew do. A calibration of kept code understates fresh compiles' noise: pooled
        with them, it let a planted 5% slowdown read as no change (docs/comparing.md)."""
        mode = compiled_code(row)
        if mode is None or self.compiled_code == mode:
            return None
        return (f"calibration not used: its workers {_HOW_COMPILED.get(self.compiled_code, self.compiled_code)}, "
                f"these {_HOW_COMPILED.get(mode, mode)} (recalibrate with the same --compile-cache)")


def median_variance(round_log_sd: float, rounds: float) -> float:
    """The variance of the median of ``rounds`` values of standard deviation ``round_log_sd`` (normal noise: pi/2
    times a mean's)."""
    return math.pi / 2 * round_log_sd ** 2 / max(rounds, 1)


UNRECORDED = "unrecorded"  # an entry written before calibrations recorded how compiled rows were compiled
_HOW_COMPILED = {"fresh": "compiled anew", "kept": "kept their compiled code",
                 UNRECORDED: "compiled in a way it did not record"}


def compiled_code(row: Row) -> str | None:
    """How a compiled row's workers came by their compiled code (``--compile-cache``: fresh, kept); None when the
    row compiles nothing."""
    return row.extra.get("compile_cache", UNRECORDED) if row.extra.get("compiled") else None


def recorded_compiled_code(entry: dict, compiled: bool) -> str | None:
    """An entry's ``compiled_code``; UNRECORDED for a compiled row's entry written before the field existed."""
    return entry.get("compiled_code", UNRECORDED if compiled else None)


def noise_of(entry: dict) -> Noise:
    """One calibration entry as the Noise it describes."""
    return Noise(entry["pair_log_sd"], entry["pair_df"], entry["process_log_sd"], entry["process_df"],
                 entry["rounds_per_worker"], entry["measured"], entry["how"], tuple(entry.get("sources", ())),
                 entry["pairs"], recorded_compiled_code(entry, bool(entry["identity"].get("compiled"))),
                 entry.get("round_log_sd"), entry.get("round_df", 0), entry.get("processes", 0))


def compiled_code_of(identity: dict, compile_cache: str | None) -> str | None:
    """``compiled_code`` for a row known by its identity fields and its workers' --compile-cache, before it has
    timed anything (a worker telling the coordinator which row it is)."""
    return (compile_cache or UNRECORDED) if identity.get("compiled") else None
