"""This machine's measured noise, per row: an A/A measured once, kept, and used by every later comparison.

TorchBench gates on a per-test noise figure measured by repeated runs on the gating machine; this is the same idea
for devicebench. ``devicebench calibrate`` runs the same Python twice as worker pairs (``devicebench run --env
A=PY --env B=PY``, interleave.py) and keeps, for each row, two spreads on the log of the round times:

- ``pair_log_sd``: how much worker pairs' estimates of B/A vary about 1 when nothing changed (per-process state
  and what round noise is left after pairing; ``a_a_spread``). An interleaved comparison of a few pairs pools it
  with its own spread (significance.py, "Calibrated noise"), so three pairs are judged with the degrees of freedom
  of many.
- ``process_log_sd``: how much one process's median varies from another's, processes of the same code at different
  times: what a single-process comparison (``pytest --benchmark-autosave`` twice) is up against. ``devicebench
  calibrate --round-time 0`` measures it as plain runs are made, fresh processes one after another
  (``add_processes``: an entry of its own beside the pairs', the one single-process verdicts use). A worker of a
  pair waits for the other's round before each of its own: on the H200, 16 such workers' medians of
  resnet18_cifar resident fell within 174.6-178.6 ms, while ten plain runs fell in two modes, 172.2-172.6 and
  174.7-178.1 ms (an A/A of two read 1.04x at p=0.01 with the pairs' spread).
- ``round_log_sd``: how much one round's B/A varies about its pair's own, from round to round: the part of a pair's
  spread that more rounds shrink (``Noise.pair_variance``), so that a run timing more rounds than the A/A did is
  judged with the noise it has, and ``devicebench run --until`` can size a row's rounds to its question.

An entry applies only to the same row identity (schema.py), on the same machine (``results.Run.machine_key``) and
torch version: noise is a property of all three; and, where both recorded them, under the same host memory
settings (transparent huge pages, allocator variables: host.py), which move the rows that allocate on the host
(``host_memory_otherwise`` says so in the verdict). The file lives beside the results
(``.benchmarks/devicebench-calibration.json`` by default, ``--calibration`` or ``DEVICEBENCH_CALIBRATION`` to
choose another), is written atomically, and a file of another format is refused by name.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from pathlib import Path

from devicebench.errors import UsageError
from devicebench import host, results, runfile, schema
from devicebench.noise import Noise, compiled_code, noise_of, recorded_compiled_code
from devicebench.results import Row, Run

CALIBRATION_SCHEMA = 1
DEFAULT_PATH = Path(".benchmarks") / "devicebench-calibration.json"


def default_path() -> Path:
    return Path(os.environ.get("DEVICEBENCH_CALIBRATION") or DEFAULT_PATH)


def _machine(run: Run) -> list:
    node, cpu, accelerators = run.machine_key
    return [node, cpu, list(accelerators)]


PAIRS, PLAIN = "pairs", "plain"  # what an entry measured: worker pairs (add_explained) or plain processes


def kind_for(row: Row) -> str:
    """The calibration a row's verdict uses: of plain processes for a row of one process, else of worker pairs."""
    return PLAIN if len(row.processes) == 1 else PAIRS


def _key(machine: list, torch_version: str, identity: dict, kind: str) -> str:
    return json.dumps([machine, torch_version, identity, kind], sort_keys=True)


def _entry_key(entry: dict) -> str:
    return _key(entry["machine"], entry["torch_version"], entry["identity"], PAIRS if entry["pairs"] else PLAIN)


def entry_problem(entry: object) -> str | None:
    """Why a calibration entry read from a file cannot be used (edited by hand, or damaged), or None."""
    if not isinstance(entry, dict):
        return "is not an entry"
    kinds = {"machine": list, "torch_version": str, "test": str, "identity": dict, "measured": str, "how": str}
    for name, kind in kinds.items():
        if not isinstance(entry.get(name), kind):
            return f"has no {name} ({kind.__name__})"
    for name in ("pairs", "pair_df", "process_df", "round_df", "processes", "rounds_per_worker"):
        value = entry.get(name, 0)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            return f"has {name} {value!r}, not a count"
    if entry.get("rounds_per_worker", 0) < 1:
        return "has no rounds_per_worker"
    for name in ("pair_log_sd", "process_log_sd", "round_log_sd"):
        value = entry.get(name)
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)
                                  or not math.isfinite(value) or not 0 <= value < 10):
            return f"has {name} {value!r}, not a spread"
    for name in ("pair_log_sd", "process_log_sd"):
        if name not in entry:
            return f"has no {name}"
    return None


class Calibration:
    """The entries of one calibration file, looked up by (machine, torch version, row identity)."""

    def __init__(self, path: Path, entries: list[dict] | None = None):
        self.path = Path(path)
        self.entries = list(entries or [])

    @classmethod
    def load(cls, path: Path | None = None) -> Calibration:
        """The file's entries; an empty calibration when there is no file."""
        path = default_path() if path is None else Path(path)
        if not path.exists() and not path.is_symlink():
            return cls(path)
        try:
            data = json.loads(runfile.read_bytes_checked(path, "calibration file").decode("utf-8"))
        except runfile.FileError as error:
            raise UsageError(f"{error} (--calibration names the file)") from None
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
            raise UsageError(f"{path}: not a readable calibration file ({error}); delete it and run devicebench "
                             f"calibrate again") from error
        if not isinstance(data, dict) or data.get("calibration_schema") != CALIBRATION_SCHEMA \
                or not isinstance(data.get("entries"), list):
            raise UsageError(f"{path}: not a devicebench calibration of format {CALIBRATION_SCHEMA} (written by "
                             f"another version?); delete it and run devicebench calibrate again")
        for number, entry in enumerate(data["entries"], 1):
            if (problem := entry_problem(entry)) is not None:
                raise UsageError(f"{path}: entry {number} {problem}, so no verdict can rest on it; delete the file "
                                 f"and run devicebench calibrate again")
        return cls(path, data["entries"])

    def noise_for(self, run: Run, row: Row, kind: str | None = None) -> Noise | None:
        """The calibrated noise of this row on the machine and torch version of ``run``, if measured, of ``kind``
        (default: the one its verdict uses, ``kind_for``)."""
        return self.noise_at(_machine(run), run.torch_version, row.identity.fields(), kind or kind_for(row),
                             host_memory=run.machine_info.get("host_memory"))

    def noise_at(self, machine: list, torch_version: str, identity: dict, kind: str = PAIRS, *,
                 host_memory: dict | None) -> Noise | None:
        """The calibrated noise of the row of ``identity`` (``RowIdentity.fields``) on ``machine`` and
        ``torch_version``, if measured, of ``kind``: PAIRS or PLAIN; None also when it was measured under other
        host memory settings than ``host_memory`` (host.py; unknown on either side, as in files from before they
        were recorded: used)."""
        entry = self._entry_of(_key(machine, torch_version, _jsonable(identity), kind))
        if entry is None or host.memory_differences(entry.get("host_memory"), host_memory):
            return None
        return noise_of(entry)

    def noise_between(self, base_run: Run, base_row: Row, run: Run, row: Row) -> Noise | None:
        """The noise of a change on one machine: the candidate's torch version's, else the baseline's. Runs of two
        machines have no shared noise figure (each machine's is its own), nor runs made under different host
        memory settings (no calibration describes both sides)."""
        if base_run.machine_key != run.machine_key or _memory_differences(base_run, run):
            return None
        return self.noise_for(run, row) or self.noise_for(base_run, base_row)

    def pinned_otherwise(self, base_run: Run, base_row: Row, run: Run, row: Row) -> str | None:
        """Why a row that ``noise_between`` found nothing for has no calibration, where this machine and torch
        version have one of the same row with its rounds pinned the other way (schema.PINNED_ROUNDS): a
        calibration made before ``devicebench run`` pinned rounds, or with ``--pin-rounds off``."""
        if base_run.machine_key != run.machine_key or kind_for(row) == PLAIN:  # plain entries are never pinned
            return None
        fields = row.identity.fields()
        flipped = {name: value for name, value in fields.items() if name != schema.PINNED_ROUNDS}
        if schema.PINNED_ROUNDS not in fields:
            flipped[schema.PINNED_ROUNDS] = True
        for candidate_run in (run, base_run):
            if self.noise_at(_machine(candidate_run), candidate_run.torch_version, flipped,
                             host_memory=candidate_run.machine_info.get("host_memory")) is not None:
                measured, these = (("not pinned", "pinned to a core") if schema.PINNED_ROUNDS in fields
                                   else ("pinned to a core", "not pinned"))
                return (f"calibration not used: its rounds were {measured}, these {these} (recalibrate with "
                        f"devicebench calibrate, which pins as devicebench run does, or give both the same "
                        f"--pin-rounds)")
        return None

    def host_memory_otherwise(self, base_run: Run, base_row: Row, run: Run, row: Row) -> str | None:
        """Why a row that ``noise_between`` found nothing for has no calibration, where this machine, torch version
        and row have one measured under other host memory settings (a host whose huge pages were switched, an
        environment that preloads another allocator)."""
        if base_run.machine_key != run.machine_key:
            return None
        entries = [(candidate_run, self._entry_of(_key(_machine(candidate_run), candidate_run.torch_version,
                                                       _jsonable(candidate_row.identity.fields()),
                                                       kind_for(candidate_row))))
                   for candidate_run, candidate_row in ((run, row), (base_run, base_row))]
        if not any(entry for _, entry in entries):
            return None
        if differences := _memory_differences(base_run, run):
            return (f"calibration not used: the two runs were made under different host memory settings "
                    f"({'; '.join(differences)}), which no calibration describes both of")
        for candidate_run, entry in entries:
            differences = host.memory_differences(None if entry is None else entry.get("host_memory"),
                                                  candidate_run.machine_info.get("host_memory"))
            if differences:
                return (f"calibration not used: calibrated under other host memory settings than these runs' "
                        f"({'; '.join(differences)}); run devicebench calibrate under these")
        return None

    def rows_of(self, machine_key: tuple) -> list[dict]:
        """The entries measured on one machine (``devicebench info``)."""
        node, cpu, accelerators = machine_key
        return [entry for entry in self.entries if entry["machine"] == [node, cpu, list(accelerators)]]

    def add(self, first: Run, second: Run, how: str) -> list[dict]:
        """``add_explained``'s entries alone."""
        return [entry for entry, _ in self.add_explained(first, second, how)]

    def add_explained(self, first: Run, second: Run, how: str) -> list[tuple[dict, str]]:
        """The A/A runs' noise, per row both runs have, pooled with an earlier calibration of the same key when
        its workers timed a like number of rounds and came by their compiled code alike (else replacing it).
        (Rows whose rounds were pinned to a core have an identity of their own, schema.PINNED_ROUNDS, so their
        entries are apart from unpinned ones.)
        Returns the new entries, each with what was done with it in words for the user: pooled, replacing an
        earlier entry (and why), or the row's first."""
        if first.machine_key != second.machine_key or first.torch_version != second.torch_version:
            raise UsageError("a calibration is an A/A: both runs must come from one machine and torch version")
        if differences := _memory_differences(first, second):
            raise UsageError(f"a calibration is an A/A: these runs were made under different host memory settings "
                             f"({'; '.join(differences)}); calibrate from two runs made under the same ones "
                             f"(devicebench info shows this host's)")
        added = []
        for row in first.rows:
            other = next((candidate for candidate in second.rows if candidate.identity == row.identity), None)
            if other is None or len(row.pairs.keys() & other.pairs.keys()) < 1:
                continue
            entry = _entry(first, row, other, how)
            earlier = self._entry_of(_entry_key(entry))
            why = None if earlier is None else _why_kept_apart(earlier, entry)
            if earlier is None:
                said = "its first calibration"
            elif why is None:
                said = f"pooled with {earlier['pairs']} earlier pair(s)"
                entry = _pooled(earlier, entry)
            elif set(earlier.get("sources", ())) & set(entry["sources"]):
                said = (f"{why}: the entry is theirs alone now ({earlier['pairs']} pair(s) before, "
                        f"{entry['pairs']} now)")
            else:
                said = f"replaces an earlier entry of {_size(earlier)} ({why})"
            added.append((self._put(entry), said))
        return added

    def add_processes(self, run: Run, how: str) -> list[tuple[dict, str]]:
        """A run of fresh processes of one Python, one after another (``devicebench run`` of one environment): per
        row of two processes or more, the spread of their medians, pooled with an earlier calibration of plain
        processes of the same key when its processes timed a like number of rounds and compiled alike, else
        replacing it. Returns the entries with what was done with each, as ``add_explained``."""
        added = []
        for row in run.rows:
            medians = row.process_medians
            if len(medians) < 2:
                continue
            logs = [math.log(value) for value in medians]
            entry = {"machine": _machine(run), "torch_version": run.torch_version,
                     "identity": _jsonable(row.identity.fields()), "test": row.test, "pairs": 0,
                     "processes": len(logs),
                     "pair_log_sd": None, "pair_df": 0, "process_log_sd": statistics.stdev(logs),
                     "process_df": len(logs) - 1,
                     "rounds_per_worker": int(statistics.median(len(times) for times in row.processes)),
                     "measured": time.strftime("%Y-%m-%dT%H:%M:%S"), "how": how, "sources": [],
                     "compiled_code": compiled_code(row), "round_log_sd": None, "round_df": 0,
                     "host_memory": run.machine_info.get("host_memory")}
            earlier = self._entry_of(_entry_key(entry))
            if earlier is None:
                said = "its first calibration"
            elif (why := _why_kept_apart(earlier, entry)) is None:
                said = f"pooled with {_size(earlier)}"
                entry = _pooled(earlier, entry)
            else:
                said = f"replaces an earlier entry of {_size(earlier)} ({why})"
            added.append((self._put(entry), said))
        return added

    def _entry_of(self, key: str) -> dict | None:
        return next((entry for entry in self.entries if _entry_key(entry) == key), None)

    def _put(self, entry: dict) -> dict:
        """``entry`` in place of the one of its key, if any."""
        key = _entry_key(entry)
        self.entries = [e for e in self.entries if _entry_key(e) != key] + [entry]
        return entry

    def save(self) -> Path:
        """Written to a temporary file and renamed: a reader never sees half a file."""
        return results.write_json_atomically(self.path, {"calibration_schema": CALIBRATION_SCHEMA,
                                                         "entries": self.entries}, sort_keys=True)


def _memory_differences(first: Run, second: Run) -> list[str]:
    return host.memory_differences(first.machine_info.get("host_memory"), second.machine_info.get("host_memory"))


def _jsonable(fields: dict) -> dict:
    """The identity as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(fields))


def pair_estimates(base: list[list[float]], cand: list[list[float]]) -> list[float]:
    """Per worker pair, the median over its rounds of log B - log A (significance.py's pair estimate)."""
    estimates = []
    for a_rounds, b_rounds in zip(base, cand):
        count = min(len(a_rounds), len(b_rounds))
        estimates.append(statistics.median(math.log(b_rounds[k]) - math.log(a_rounds[k]) for k in range(count)))
    return estimates


def round_spread(base: list[list[float]], cand: list[list[float]]) -> tuple[float | None, int]:
    """How much one round's log B - log A varies about its own pair's mean, pooled over the pairs, and its degrees
    of freedom (each pair's rounds less one). About each pair's own mean, so that what a worker pair shares (its
    processes' difference) is left out: this is the noise that more rounds average away."""
    squares, df = 0.0, 0
    for a_rounds, b_rounds in zip(base, cand):
        count = min(len(a_rounds), len(b_rounds))
        if count < 2:
            continue
        logs = [math.log(b_rounds[k]) - math.log(a_rounds[k]) for k in range(count)]
        mean = statistics.fmean(logs)
        squares += sum((value - mean) ** 2 for value in logs)
        df += count - 1
    return (math.sqrt(squares / df), df) if df else (None, 0)


def a_a_spread(estimates: list[float]) -> float:
    """The spread of an A/A's pair estimates about zero, on one degree of freedom a pair.

    In an A/A the true B/A is known: 1, a log of zero. So the spread is measured about zero, not about the pairs'
    own mean: an offset every pair shares is noise there (nothing changed), and it is exactly what a later
    comparison must not read as a change. Two pairs that both read 15% fast spread little about their mean;
    pooled at that spread, a later run would call a difference of that size significant."""
    return math.sqrt(sum(estimate ** 2 for estimate in estimates) / len(estimates))


def _size(entry: dict) -> str:
    return f"{entry['pairs']} pair(s)" if entry["pairs"] else f"{entry.get('processes', 0)} plain process(es)"


def _why_kept_apart(earlier: dict, new: dict) -> str | None:
    """Why a new entry replaces the earlier one of its row rather than pooling with it (``Calibration.add``);
    None: they pool."""
    if set(earlier.get("sources", ())) & set(new["sources"]):
        return "these runs were already in it"
    if not 0.5 <= earlier["rounds_per_worker"] / new["rounds_per_worker"] <= 2:
        return (f"its workers timed {earlier['rounds_per_worker']} rounds, these {new['rounds_per_worker']}: "
                f"pooled only within 2x, as round noise differs")
    if recorded_compiled_code(earlier, bool(new["identity"].get("compiled"))) != new["compiled_code"]:
        return "its compiled code came about otherwise"
    if differences := host.memory_differences(earlier.get("host_memory"), new.get("host_memory")):
        return f"measured under other host memory settings ({'; '.join(differences)})"
    return None


def _pooled(earlier: dict, new: dict) -> dict:
    """Two calibrations of one row, machine and torch version as one: variances weighted by their degrees of
    freedom, as one longer A/A would have given them."""
    def pool(field: str, df_field: str) -> float | None:
        parts = [(e[field], e[df_field]) for e in (earlier, new) if e[field] is not None and e[df_field] > 0]
        df = sum(d for _, d in parts)
        return math.sqrt(sum(d * sd ** 2 for sd, d in parts) / df) if df else None

    return {**new, "pairs": earlier["pairs"] + new["pairs"],
            **({"processes": earlier["processes"] + new["processes"]} if "processes" in new else {}),
            "pair_log_sd": pool("pair_log_sd", "pair_df"), "pair_df": earlier["pair_df"] + new["pair_df"],
            "process_log_sd": pool("process_log_sd", "process_df"),
            "process_df": earlier["process_df"] + new["process_df"],
            **({"round_log_sd": pool("round_log_sd", "round_df"), "round_df": earlier["round_df"] + new["round_df"]}
               if earlier.get("round_log_sd") is not None and new.get("round_log_sd") is not None else {}),
            "sources": [*earlier.get("sources", ()), *new["sources"]],
            "host_memory": new.get("host_memory") or earlier.get("host_memory"),  # an older file's run did not say
            "how": f"{earlier['how']}; then {new['how']}"}


def _entry(run: Run, row: Row, other: Row, how: str) -> dict:
    keys = sorted(row.pairs.keys() & other.pairs.keys())
    estimates = pair_estimates([row.pairs[k] for k in keys], [other.pairs[k] for k in keys])
    # One process's median against another's: the spread of log medians within each side, pooled.
    sides = [[math.log(v) for v in r.process_medians] for r in (row, other)]
    process_df = sum(len(side) - 1 for side in sides)
    process_var = (sum((len(side) - 1) * statistics.variance(side) for side in sides if len(side) > 1)
                   / process_df) if process_df else None
    rounds = [len(times) for times in row.processes + other.processes]
    round_log_sd, round_df = round_spread([row.pairs[k] for k in keys], [other.pairs[k] for k in keys])
    return {"machine": _machine(run), "torch_version": run.torch_version,
            "identity": _jsonable(row.identity.fields()), "test": row.test,
            "pairs": len(estimates), "pair_log_sd": a_a_spread(estimates), "pair_df": len(estimates),
            "process_log_sd": None if process_var is None else math.sqrt(process_var), "process_df": process_df,
            "rounds_per_worker": int(statistics.median(rounds)),
            "measured": time.strftime("%Y-%m-%dT%H:%M:%S"), "how": how,
            "sources": sorted({interleave_id for interleave_id, _ in keys}), "compiled_code": compiled_code(row),
            "round_log_sd": round_log_sd, "round_df": round_df, "host_memory": run.machine_info.get("host_memory")}
