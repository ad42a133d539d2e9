"""The coordinator of ``devicebench run`` (coordinator.py): worker pairs until --until or the budget says stop,
resume, the staging folder, compiling first, and what a worker's file is turned into."""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from devicebench import cli, commands, coordinator, interleave, results, runfile, significance, staging
from devicebench.calibration import Calibration
from devicebench.errors import DevicebenchError
from devicebench.interleave import Point
from devicebench.options import RowOptions


@dataclass(frozen=True)
class FakeRow:
    """A row as the coordinator handles it (rows.RowSpec's name and device), for pairs that fake their workers."""

    name: str
    device: str = "cuda"
    pipeline: str = "resident"


def plan_of(*names: str, device: str = "cuda") -> coordinator.Plan:
    return coordinator.Plan(tuple(FakeRow(name, device) for name in names), RowOptions())


def worker_file(times: dict[str, list[float]]) -> dict:
    """One worker's file, as a worker of a pair writes it (a row named ..._seed is of the seed pipeline)."""
    rows = [{"name": name, "status": "measured", "extra": {
        "workload": name, "workload_version": 1, "pipeline": "seed" if name.endswith("_seed") else "resident",
        "scale": "quick", "samples_per_round": 100, "valid_samples": 10, "batch_size": 10, "valid_batch_size": 10,
        "device": "cpu", "device_name": "cpu", "loader_wait_fraction": 0.0, "samples_per_s": 100 / rounds[0],
        "processes": [{"round_seconds": rounds, "train_seconds": rounds, "val_seconds": [0.0] * len(rounds),
                       "samples_per_s": 100 / rounds[0], "loader_wait_fraction": 0.0,
                       "round_sequence": list(range(len(rounds)))}]}} for name, rounds in times.items()]
    return {"devicebench": {"schema": runfile.SCHEMA, "worker": True, "interrupted": False},
            "machine_info": {"node": "n", "cpu_name": "c", "torch_version": "2.14.1"}, "rows": rows}


class Started(list):
    """The pairs a fake run started, and the plan of its rows (``plan``)."""

    plan: coordinator.Plan


def fake_pairs(monkeypatch, pair_seconds: float, spread: dict[str, float], row_seconds: dict[str, float] | None = None):
    """Replace the real workers: pair i of each row is 1.0 s rounds with a per-pair offset of ``spread``. With
    ``row_seconds`` a pair takes ``pair_seconds`` to start up plus each of its rows' seconds, one turn a row."""
    offsets = [0.0, 1.0, -1.0, 0.5, -0.5, 0.8, -0.8, 0.2, -0.2, 0.9]
    started = Started()
    started.plan = plan_of(*spread)

    def run_pair(self, environments, index, rows, spent):
        started.append(index)
        names = {row.name for row in rows}
        for env in environments:
            sign = 1 if env.label == "B" else 0
            times = {name: [math.exp(sign * size * offsets[index - 1])] * 5 for name, size in spread.items()
                     if name in names}
            self.folder.worker_file(env.label, index).write_text(json.dumps(worker_file(times)))
        seconds, turns = pair_seconds, []
        for name in (row_seconds or {}):
            if name in names:
                turns.append([len(turns) + 1, "A", name, 0, seconds])
                seconds += row_seconds[name]
        self.folder.pair_meta(index).write_text(json.dumps({"seconds": seconds, "turns": turns}))
        return seconds

    monkeypatch.setattr(coordinator.Pairs, "run_pair", run_pair)
    return started


ENVS = [coordinator.Environment("A", sys.executable), coordinator.Environment("B", sys.executable)]


def run(plan: coordinator.Plan, tmp_path: Path, name: str, processes: int | None = None, **settings) -> list[Path]:
    return coordinator.run(settings.pop("environments", ENVS), processes, plan, tmp_path, name, **settings)


def test_until_stops_at_the_first_pair_where_every_row_can_see_the_size_asked(monkeypatch, tmp_path):
    started = fake_pairs(monkeypatch, 1.0, {"test_steady": 0.01, "test_noisy": 0.03})
    lines: list[str] = []
    written = run(started.plan, tmp_path, "u", None, echo=lines.append, until_target=0.05, budget_seconds=3600)
    runs = [results.load_run(path) for path in written]
    # Independently: the verdict on what was kept can see 5% on both rows at the gate's level over the two rows
    # (5%/2 each: significance.py, "The gate's power"), and one pair fewer could not.
    for base, cand in zip(runs[0].rows, runs[1].rows):
        assert significance.judge(base, cand).for_family(2).detectable <= 0.05
        assert significance.judge(base, cand).detectable < significance.judge(base, cand).for_family(2).detectable
    assert started == [1, 2, 3, 4, 5]
    assert "every row can see a change of its size (5%) after 5 pairs: stopping" in lines
    assert ("    after 4 pairs, smallest detectable change (at the gate's level over 2 rows): steady 4.7% (reached); "
            "noisy 7.2%") in lines
    # Two pairs on one degree of freedom judge nothing yet, whatever figure they give, and the line says so.
    assert any(line.startswith("    after 2 pairs") and line.endswith("(judged from pair 3)") for line in lines)
    assert lines[-2].startswith("--until 5%, at the gate's level over 2 rows: 2 of 2 rows reached it in 5 pairs")
    # The run ends with the gate that judges its files at the sizes it asked.
    assert lines[-1].endswith(f". Gate them: devicebench compare {written[0]} {written[1]} --threshold 5% "
                              f"--fail-on-regression")


def test_a_row_that_reached_its_size_is_left_out_of_later_pairs_and_keeps_its_pair_numbers(monkeypatch, tmp_path):
    started = fake_pairs(monkeypatch, 1.0, {"test_steady": 0.001, "test_noisy": 0.03})
    lines: list[str] = []
    written = run(started.plan, tmp_path, "d", None, echo=lines.append, until_target=0.05, budget_seconds=3600)
    assert started == [1, 2, 3, 4, 5]
    assert "    pair 4 leaves out 1 row(s) that reached their size: steady" in lines
    runs = [results.load_run(path) for path in written]
    steady = [next(row for row in run.rows if row.test == "test_steady") for run in runs]
    noisy = [next(row for row in run.rows if row.test == "test_noisy") for run in runs]
    assert [pair for _, pair in sorted(steady[0].pairs)] == [1, 2, 3]  # measured in pairs 1-3 only
    assert [pair for _, pair in sorted(noisy[1].pairs)] == [1, 2, 3, 4, 5]
    report = lines[-2].splitlines()
    assert report[0] == ("--until 5%, at the gate's level over 2 rows: 2 of 2 rows reached it in 5 pairs "
                         "(0m05s measured)")
    assert "    reached: test_steady (0.5% from 3 pairs)" in report


def test_until_asks_a_pipeline_its_own_size(monkeypatch, tmp_path):
    # The seed row spreads 3% a pair: 5% is out of reach in 10 pairs here, 10% is reached from the fourth.
    started = fake_pairs(monkeypatch, 1.0, {"test_x_resident": 0.001, "test_x_seed": 0.03})
    target = commands.until_target([cli._until_part("5%"), cli._until_part("seed=10%")])
    assert target.describe() == "5% (seed 10%)"
    lines: list[str] = []
    run(started.plan, tmp_path, "p", 10, echo=lines.append, until_target=target)
    assert started == [1, 2, 3, 4]
    assert lines[-2].startswith("--until 5% (seed 10%), at the gate's level over 2 rows: 2 of 2 rows reached it "
                                "in 4 pairs")
    with pytest.raises(argparse.ArgumentTypeError, match="'fast' is not a pipeline"):
        cli._until_part("fast=5%")
    with pytest.raises(DevicebenchError, match="give one size for every row"):
        commands.until_target([cli._until_part("seed=10%")])


def calibration_of_an_a_a(monkeypatch, tmp_path: Path, spread: dict[str, float]) -> Calibration:
    """The machine's A/A of ten fake pairs, kept as its calibration (what devicebench calibrate does)."""
    started = fake_pairs(monkeypatch, 1.0, spread)
    first, second = run(started.plan, tmp_path, "cal", 10, echo=lambda line: None)
    found = Calibration(tmp_path / "calibration.json")
    found.add(results.load_run(first), results.load_run(second), "planted A/A")
    return found


def test_a_calibrated_row_is_judged_from_two_pairs(monkeypatch, tmp_path):
    # The machine's A/A, ten pairs, kept as its calibration; then an --until run of the same rows stops after
    # two pairs, where an uncalibrated one needs three.
    found = calibration_of_an_a_a(monkeypatch, tmp_path, {"test_steady": 0.01})
    started = fake_pairs(monkeypatch, 1.0, {"test_steady": 0.01})
    lines: list[str] = []
    run(started.plan, tmp_path, "u", None, echo=lines.append, until_target=0.05, budget_seconds=600,
        calibration=found)
    assert started == [1, 2]
    assert "    reached: test_steady (" in lines[-2] and "from 2 pairs)" in lines[-2]
    started.clear()
    run(started.plan, tmp_path, "v", None, echo=lines.append, until_target=0.05, budget_seconds=600)
    assert started == [1, 2, 3]


def pairs_for(tmp_path: Path, environments=ENVS, plan: coordinator.Plan | None = None, pin: bool = False,
              echo=lambda line: None) -> coordinator.Pairs:
    folder = staging.claim(tmp_path / ".t.processes", {"test": True})
    return coordinator.Pairs(environments, plan or plan_of("test_row"), folder, echo, None, None, 6.0, pin)


def recording_workers(given: list, rows: dict[str, list[float]] | None = None):
    """In place of interleave.run_workers: records each worker's task and leaves the file a finished worker
    would (``rows``: its rows' rounds)."""
    def record(commands, logs, round_seconds=None, rounds_wanted=None):
        for label, command in commands.items():
            argv = command(10, 11)
            task = json.loads(Path(argv[-1]).read_text())
            given.append((label, task))
            Path(task["output"]).write_text(json.dumps(worker_file(rows or {"test_row": [1.0] * 5})))
            Path(logs[label]).write_text("")
        return {label: 0 for label in commands}, []

    return record


def test_the_environment_that_starts_first_and_leads_the_turns_rotates_from_pair_to_pair(monkeypatch, tmp_path):
    given = []
    monkeypatch.setattr(coordinator.interleave, "run_workers", recording_workers(given))
    three = [*ENVS, coordinator.Environment("C", sys.executable)]
    orders = []
    for index in (1, 2, 3, 4):
        for environments in (ENVS, three):
            given.clear()
            pairs_for(tmp_path / f"{index}-{len(environments)}", environments).run_pair(environments, index,
                                                                                        (FakeRow("test_row"),), 0.0)
            orders.append("".join(label for label, _ in given))  # the order the workers start and take turns
    assert orders == ["AB", "ABC", "BA", "BCA", "AB", "CAB", "BA", "ABC"]


def test_rows_whose_first_builds_chose_nothing_by_timing_are_built_side_by_side_from_the_second_pair(monkeypatch,
                                                                                                      tmp_path):
    fixed = {"compiled": True, "compile_options": {"deterministic": True, "triton.autotune_pointwise": False}}
    built = {"A": {"test_plain": {"cudnn_benchmark": False}, "test_searched": {"cudnn_benchmark": True},
                   "test_fixed": fixed, "test_timed": {"compiled": True, "compile_options": {}}},
             # B's torch has no `deterministic` option, so its compile of test_fixed timed its kernels.
             "B": {"test_plain": {}, "test_searched": {"cudnn_benchmark": True},
                   "test_fixed": {"compiled": True, "compile_options": {"triton.autotune_pointwise": False}},
                   "test_timed": {"compiled": True}}}
    given = []

    def record(commands, logs, round_seconds=None, rounds_wanted=None):
        for label, command in commands.items():
            task = json.loads(Path(command(10, 11)[-1]).read_text())
            given.append((label, task))
            data = worker_file({name: [1.0] * 5 for name in built[label]})
            for row in data["rows"]:
                row["extra"].update(built[label][row["name"]])
            Path(task["output"]).write_text(json.dumps(data))
            Path(logs[label]).write_text("")
        return {label: 0 for label in commands}, []

    monkeypatch.setattr(coordinator.interleave, "run_workers", record)
    pairs = pairs_for(tmp_path, plan=plan_of(*built["A"]))
    rows = tuple(FakeRow(name) for name in built["A"])
    for index in (1, 2):
        pairs.run_pair(ENVS, index, rows, 0.0)
    assert [task["build_together"] for _, task in given] == [[], [], ["test_plain"], ["test_plain"]]
    built["B"]["test_fixed"] = fixed
    pairs.run_pair(ENVS, 3, rows, 0.0)  # what the first pair recorded decides, in every environment
    assert given[-1][1]["build_together"] == ["test_plain"]
    assert pairs.folder.built_alike(["A"]) == ["test_fixed", "test_plain"]


def test_a_worker_asks_to_build_side_by_side_only_the_rows_its_task_names_and_says_which_it_did(monkeypatch,
                                                                                                 tmp_path):
    from devicebench import measure, rows, turns, worker
    from devicebench.options import RowOptions

    asked = []

    class Pipe:
        def __init__(self, read_fd, write_fd):
            pass

        def begin_row(self, item, test, together=False):
            asked.append((test, together))
            return item

    monkeypatch.setattr(turns, "TurnPipe", Pipe)
    monkeypatch.setattr(measure, "measure_row", lambda *args, **kwargs: {"samples_per_s": 1.0, "processes": [
        {"round_seconds": [1.0]}]})
    specs = [rows.RowSpec("mnist_mlp", "devicebench.workloads.mnist_mlp", "cpu", pipeline)
             for pipeline in ("seed", "tuned")]
    task = worker.Task(rows=[vars(spec) for spec in specs], options=RowOptions(scale="quick").to_dict(),
                       output=str(tmp_path / "w.json"), turn_pipe=[10, 11], count_steps=False, parity_check=False,
                       build_together=[specs[0].name])
    finished = []
    worker.measure_rows(task, finished)
    assert asked == [(specs[0].name, True), (specs[1].name, False)]
    assert [row["extra"]["processes"][0]["built_together"] for row in finished] == [True, False]


def test_a_worker_gets_its_rows_pipe_core_and_first_pair_duties_as_fields_of_its_task(monkeypatch, tmp_path):
    given = []
    monkeypatch.setattr(coordinator.interleave, "run_workers", recording_workers(given))
    pairs = pairs_for(tmp_path, plan=plan_of("test_row"), pin=True)
    monkeypatch.setattr(coordinator.affinity, "allowed_cores", lambda: [0, 1, 2])
    for index in (1, 2):
        pairs.run_pair(ENVS, index, (FakeRow("test_row"),), 0.0)
    first, _, second, _ = (task for _, task in given)
    assert first["rows"] == [{"name": "test_row", "device": "cuda", "pipeline": "resident"}]
    assert first["turn_pipe"] == [10, 11] and first["round_core"] == 1 and second["round_core"] == 2
    # Counts and the parity check are the same in every worker of one code: the first pair's serve all.
    assert first["count_steps"] and first["parity_check"] and not second["count_steps"] and \
        not second["parity_check"]
    assert first["compile_cache"] == "fresh" and first["compile_cache_dir"] is None  # cuda: compiled anew


@pytest.mark.parametrize("pin_rounds", [True, False])
def test_every_worker_of_a_pair_gets_the_pairs_core_and_the_next_pair_the_next_core(monkeypatch, tmp_path,
                                                                                     pin_rounds):
    given = []
    monkeypatch.setattr(coordinator.interleave, "run_workers", recording_workers(given))
    monkeypatch.setattr(coordinator.affinity, "allowed_cores", lambda: [0, 1, 2])
    lines: list[str] = []
    run(plan_of("test_row"), tmp_path, "pin", 3, echo=lines.append, pin_rounds=pin_rounds)
    cores = [task["round_core"] for _, task in given]
    if pin_rounds:
        assert cores == [1, 1, 2, 2, 1, 1]
        assert any(line.startswith("pair 2: B + A workers, rounds alternated, accelerator rounds on core 2 (")
                   for line in lines)
    else:
        assert cores == [None] * 6 and not any("on core" in line for line in lines)
    # A cpu-only run has no accelerator row to pin: its workers get no core. (Its compiling first is not what is
    # tested here.)
    given.clear()
    monkeypatch.setattr(coordinator, "_compile_first", lambda *args: 0.0)
    run(plan_of("test_row", device="cpu"), tmp_path, "cpu", 2, echo=lines.append)
    assert [task["round_core"] for _, task in given] == [None] * 4


def test_a_row_the_budget_stopped_short_says_how_many_pairs_its_calibration_expects(monkeypatch, tmp_path):
    # The machine's A/A, ten pairs whose workers differ by 3% (their rounds alike: no round noise), kept as its
    # calibration; an --until 2% run capped at 3 pairs cannot get there, and says what would.
    found = calibration_of_an_a_a(monkeypatch, tmp_path, {"test_wobbly": 0.03})
    [entry] = found.entries
    assert entry["round_log_sd"] == pytest.approx(0.0, abs=1e-12)
    started = fake_pairs(monkeypatch, 1.0, {"test_wobbly": 0.03})
    lines: list[str] = []
    run(started.plan, tmp_path, "u", 3, echo=lines.append, until_target=0.02, calibration=found)
    limit, sd, df = math.log1p(0.02), entry["pair_log_sd"], entry["pair_df"]
    expected = next(n for n in range(2, 51) if significance.detection_factor(n - 1 + df) * sd / math.sqrt(n) <= limit)
    assert expected > 3
    assert ("not reached: test_wobbly (" in lines[-2] and f"the calibration expects about {expected} pairs at 5 "
            f"rounds a worker: {math.expm1(sd):.1%} of a pair's spread is per process" in lines[-2])


def test_a_row_whose_pairs_refused_the_calibration_says_so_instead_of_its_forecast(monkeypatch, tmp_path):
    # The machine's A/A spread 1%; this run's pairs spread 30% (the machine changed): the F-test refuses the
    # calibration, so its forecast would be about another machine, and the line says why instead. Two pairs on a t
    # of one degree of freedom could detect billions of percent; the line says only "over 1000%".
    found = calibration_of_an_a_a(monkeypatch, tmp_path, {"test_wobbly": 0.01})
    started = fake_pairs(monkeypatch, 1.0, {"test_wobbly": 0.30})
    lines: list[str] = []
    run(started.plan, tmp_path, "u", 2, echo=lines.append, until_target=0.05, calibration=found)
    [line] = [line for line in lines if "not reached: test_wobbly" in line]
    assert "B against A: calibration not used: these pairs spread" in line and "recalibrate" in line
    assert "the calibration expects" not in line and "(over 1000% from 2 pairs" in line


def test_workers_compile_anew_unless_on_the_cpu_alone_or_the_user_shares_the_cache():
    assert plan_of("test_row", device="cuda").compile_cache() == "fresh"
    # The cpu's compiles are the same machine code: an environment's later workers load its first's.
    assert plan_of("test_row", device="cpu").compile_cache() == "kept"
    shared = coordinator.Plan((FakeRow("test_row", "cpu"),), RowOptions(compile_cache="shared"))
    assert shared.compile_cache() == "shared"


def test_kept_code_is_compiled_once_per_environment_in_an_untimed_worker_before_the_first_pair(monkeypatch,
                                                                                                tmp_path):
    started = fake_pairs(monkeypatch, 1.0, {"test_steady": 0.001})
    compiles = []

    def fake_run(command, **kwargs):
        task = json.loads(Path(command[-1]).read_text())
        compiles.append((len(started), task))
        return coordinator.subprocess.CompletedProcess(command, 1 if "FAIL" in task["compile_cache_dir"] else 0)

    monkeypatch.setattr(coordinator.subprocess, "run", fake_run)
    plan = coordinator.Plan((FakeRow("test_x_tuned", "cpu", "tuned"), FakeRow("test_x_seed", "cpu", "seed")),
                            RowOptions())
    run(plan, tmp_path, "k", 2, echo=lambda line: None)
    assert started == [1, 2] and [pairs_before for pairs_before, _ in compiles] == [0, 0]  # both before pair 1
    for env, (_, task) in zip(ENVS, compiles):
        assert task["compile_cache"] == "kept" and task["compile_only"]
        assert task["compile_cache_dir"] == str(tmp_path.resolve() / ".k.processes" / f"compile-cache-{env.label}")
        assert [row["name"] for row in task["rows"]] == ["test_x_tuned"]  # only the compiled rows, untimed
    # A resumed run (its staging folder kept) finds its code compiled, and compiles nothing again.
    compiles.clear()
    folder = staging.claim(tmp_path / ".r", {"resumed": True})
    assert coordinator._compile_first(ENVS, plan, folder, lambda line: None) >= 0
    assert len(compiles) == 2 and (folder.compile_folder("B") / "compile_cache.COMPILED_MARK").exists() is False
    assert (folder.compile_folder("B") / coordinator.compile_cache.COMPILED_MARK).exists()
    coordinator._compile_first(ENVS, plan, folder, lambda line: None)
    assert len(compiles) == 2
    compiles.clear()
    # Nothing to compile: code compiled anew in every worker (cuda), no compiled row, or compiling turned off.
    for other in (coordinator.Plan((FakeRow("test_x_tuned", "cuda", "tuned"),), RowOptions()),
                  coordinator.Plan((FakeRow("test_x_seed", "cpu", "seed"),), RowOptions()),
                  coordinator.Plan(plan.rows, RowOptions(tuned_off=("compile",))),
                  coordinator.Plan(plan.rows, RowOptions(compile_cache="shared"))):
        coordinator._compile_first(ENVS, other, folder, lambda line: None)
    assert compiles == []
    # A compile that fails names itself and leaves nothing marked compiled: the same command tries again.
    failing = [coordinator.Environment("A", sys.executable), coordinator.Environment("FAIL", sys.executable)]
    folder = staging.claim(tmp_path / ".f", {"failing": True})
    with pytest.raises(DevicebenchError, match="FAIL: compiling its code first failed"):
        coordinator._compile_first(failing, plan, folder, lambda line: None)
    assert not (folder.compile_folder("FAIL") / coordinator.compile_cache.COMPILED_MARK).exists()


def test_a_failed_worker_is_reported_by_its_own_reason_and_its_pair_is_not_kept(monkeypatch, tmp_path):
    def failing(commands, logs, round_seconds=None, rounds_wanted=None):
        for label, command in commands.items():
            task = json.loads(Path(command(10, 11)[-1]).read_text())
            data = worker_file({"test_row": [1.0] * 5})
            if label == "B":
                data["rows"] = [{"name": "test_row", "status": "failed",
                                 "reason": "ModuleNotFoundError: No module named 'ranger21'"}]
            Path(task["output"]).write_text(json.dumps(data))
            Path(logs[label]).write_text("many lines of output\n" * 40)
        return {"A": -9, "B": 1}, []

    monkeypatch.setattr(coordinator.interleave, "run_workers", failing)
    pairs = pairs_for(tmp_path)
    with pytest.raises(DevicebenchError, match=r"B: its worker \(pair 1\) exited with 1: test_row: "
                                               r"ModuleNotFoundError: No module named 'ranger21'"):
        pairs.run_pair(ENVS, 1, (FakeRow("test_row"),), 0.0)
    assert not list(pairs.folder.folder.glob("*-001.json")) and not list(pairs.folder.folder.glob("*.part"))


def test_an_environment_where_every_row_skips_gets_no_more_workers_and_says_why(monkeypatch, tmp_path):
    def skipping(commands, logs, round_seconds=None, rounds_wanted=None):
        for label, command in commands.items():
            task = json.loads(Path(command(10, 11)[-1]).read_text())
            data = worker_file({"test_row": [1.0] * 5})
            if label == "B":
                data["rows"] = [{"name": "test_row", "status": "skipped", "reason": "cuda: not built into torch"}]
            Path(task["output"]).write_text(json.dumps(data))
            Path(logs[label]).write_text("")
        return {"A": 0, "B": 0}, []

    monkeypatch.setattr(coordinator.interleave, "run_workers", skipping)
    lines: list[str] = []
    written = run(plan_of("test_row"), tmp_path, "s", 3, echo=lines.append)
    assert [path.name for path in written] == ["s-A.json"]
    assert "    no row ran in B, so it gets no more workers and no run:\n    test_row: cuda: not built into torch" \
        in lines


def test_each_pair_says_where_its_time_went():
    schedule = [(1, "A", Point(0, "test_x", 0, granted_at=4.0)), (2, "B", Point(0, "test_x", 0, granted_at=6.0)),
                (3, "A", Point(0, "test_x", 1, granted_at=9.0)), (4, "B", Point(0, "test_x", 1, granted_at=12.0))]
    files = [{"rows": [{"status": "measured", "extra": {"processes": [{"round_seconds": [2.0]}]}}]} for _ in "AB"]
    line = interleave.where_the_time_went(schedule, 16.0, files)
    assert line == ("time: 0m16s = start-up 4 s + building rows 5 s + rounds 7 s, of which timed 4 s (25% of the "
                    "pair; the rest is warm-up rounds, evaluation and step counting)")


def test_until_stops_at_the_budget_and_names_the_rows_that_did_not_get_there(monkeypatch, tmp_path):
    started = fake_pairs(monkeypatch, 60.0, {"test_steady": 0.001, "test_noisy": 0.5})
    lines: list[str] = []
    run(started.plan, tmp_path, "b", None, echo=lines.append, until_target=0.05, budget_seconds=250)
    assert started == [1, 2, 3, 4]  # a fifth pair (60 s) would end past 250 s
    assert "budget 4m10s spent (4m00s measured; the next pair would take about 1m00s): stopping after 4 pairs" \
        in lines
    report = lines[-2].splitlines()
    assert report[0] == ("--until 5%, at the gate's level over 2 rows: 1 of 2 rows reached it in 4 pairs "
                         "(4m00s measured)")
    assert report[1].startswith("    reached: test_steady (") and report[2].startswith("    not reached: test_noisy (")


def test_the_budget_counts_only_the_rows_the_next_pair_runs(monkeypatch, tmp_path):
    # A slow row that reached its size after three pairs leaves a short fourth pair that the budget still holds;
    # judged by the mean pair (65 s) the run would have stopped at 195 s.
    started = fake_pairs(monkeypatch, 5.0, {"test_slow": 0.001, "test_fast": 0.5},
                         row_seconds={"test_slow": 50.0, "test_fast": 10.0})
    lines: list[str] = []
    run(started.plan, tmp_path, "r", None, echo=lines.append, until_target=0.05, budget_seconds=215)
    assert started == [1, 2, 3, 4]
    assert "budget 3m35s spent (3m30s measured; the next pair would take about 0m15s): stopping after 4 pairs" \
        in lines


def test_the_next_pair_is_expected_to_take_what_the_latest_pair_that_ran_each_row_took(tmp_path):
    # The first pair also checks parity, counts steps and builds every row in turn: it is not what the next costs.
    pairs = pairs_for(tmp_path)
    for index, start_up, rows in ((1, 10.0, {"test_x": 100.0, "test_y": 30.0}), (2, 5.0, {"test_x": 40.0})):
        turns, at = [], start_up
        for name, seconds in rows.items():
            turns.append([len(turns) + 1, "A", name, 0, at, False])
            at += seconds
        pairs.folder.pair_meta(index).write_text(json.dumps({"seconds": at, "turns": turns}))
    assert pairs.next_pair_seconds(2, ["test_x"]) == 45.0
    assert pairs.next_pair_seconds(2, ["test_x", "test_y"]) == 75.0  # test_y's latest is the first pair's


def test_a_budget_that_holds_too_few_pairs_for_until_says_what_would(monkeypatch, tmp_path):
    started = fake_pairs(monkeypatch, 332.0, {"test_steady": 0.01})  # the H200's whole-suite triple: 5m32s
    lines: list[str] = []
    run(started.plan, tmp_path, "h", None, echo=lines.append, until_target=0.05, budget_seconds=600)
    assert started == [1]
    assert "--until judges from 3 pairs on, and at 5m32s a pair this budget holds 1: give --budget 17m or more" \
        in "\n".join(lines)
    assert any(line.startswith("--until 5%: not judged: 1 pair(s) measured") for line in lines)


def test_budget_advice_counts_a_pair_at_what_the_next_would_take_not_what_came_before_the_first():
    # The VM: the cpu environments' code compiled before the first pair (1m56s), then a pair of 2m26s.
    from devicebench import until

    assert until.budget_advice(False, 1, 262.0, 146.0) == (
        "\n    --until judges from 3 pairs on, and at 2m26s a pair this budget holds 1: give --budget 10m or more, "
        "or fewer rows (-k)")
    assert until.budget_advice(False, 3, 700.0, 146.0) == ""
    assert "at 4m22s a pair" in until.budget_advice(False, 1, 262.0, 0.0)  # no pair's record: the mean pair


def test_one_pair_with_a_calibration_says_until_judges_from_two(monkeypatch, tmp_path):
    found = calibration_of_an_a_a(monkeypatch, tmp_path, {"test_wobbly": 0.03})
    started = fake_pairs(monkeypatch, 504.0, {"test_wobbly": 0.03})  # the H200's three-workload triple: 8m24s
    lines: list[str] = []
    run(started.plan, tmp_path, "one", None, echo=lines.append, until_target=0.05, budget_seconds=900,
        calibration=found)
    assert started == [1]
    assert ("--until judges from 2 pairs on with a calibration, and at 8m24s a pair this budget holds 1: give "
            "--budget 17m or more") in "\n".join(lines)
    # A calibration of other rows does not count.
    other = calibration_of_an_a_a(monkeypatch, tmp_path / "other", {"test_other": 0.03})
    started = fake_pairs(monkeypatch, 504.0, {"test_wobbly": 0.03})
    lines.clear()
    run(started.plan, tmp_path, "two", None, echo=lines.append, until_target=0.05, budget_seconds=900,
        calibration=other)
    assert "--until judges from 3 pairs on, and at 8m24s a pair this budget holds 1: give --budget 26m" \
        in "\n".join(lines)


def test_a_budget_of_two_calibrated_pairs_does_not_say_until_cannot_judge(monkeypatch, tmp_path):
    # With a calibration, --until judges from two pairs: a budget that held two says per row what it reached and
    # expects, not "--until judges from 3 pairs on".
    found = calibration_of_an_a_a(monkeypatch, tmp_path, {"test_wobbly": 0.03})
    started = fake_pairs(monkeypatch, 250.0, {"test_wobbly": 0.03})
    lines: list[str] = []
    run(started.plan, tmp_path, "two", None, echo=lines.append, until_target=0.01, budget_seconds=600,
        calibration=found)
    assert any(line.startswith("budget 10m00s spent") and "stopping after 2 pairs" in line for line in lines)
    assert not any("--until judges from" in line for line in lines)
    assert "not reached: test_wobbly (" in "\n".join(lines)


def test_until_resumes_from_the_pairs_already_measured(monkeypatch, tmp_path):
    started = fake_pairs(monkeypatch, 1.0, {"test_steady": 0.01})
    plan = started.plan
    folder = staging.claim(tmp_path / ".r.processes", {**plan.describe(), "environments": [vars(env) for env in ENVS]})
    pairs = coordinator.Pairs(ENVS, plan, folder, print, None, None, 1.0, False)
    for index in (1, 2):
        pairs.run_pair(ENVS, index, plan.rows, 0.0)
    folder.release(remove=False)  # the run that measured them stopped
    started.clear()
    lines: list[str] = []
    run(plan, tmp_path, "r", 10, echo=lines.append, until_target=0.05)
    assert lines[:2] == ["pair 1: already measured, kept", "pair 2: already measured, kept"] and started == [3]


def test_a_staging_folder_of_another_command_is_refused_only_when_it_holds_measurements(tmp_path):
    folder = tmp_path / ".s.processes"
    staging.claim(folder, {"rows": [], "options": {"pretrained": "none"}}).release(remove=False)
    # That command failed before measuring anything (a mistyped option): the corrected one takes the folder over.
    staging.claim(folder, {"rows": [], "options": {"pretrained": "no"}}).release(remove=False)
    assert json.loads((folder / "plan.json").read_text())["options"] == {"pretrained": "no"}
    (folder / "A-001.json").write_text("{}")
    with pytest.raises(DevicebenchError, match="holds the unfinished workers of another `devicebench run`"):
        staging.claim(folder, {"rows": [], "options": {}})


def test_a_second_run_of_the_same_name_is_refused_while_the_first_is_alive(tmp_path):
    first = staging.claim(tmp_path / ".same.processes", {"plan": 1})
    with pytest.raises(DevicebenchError, match=r"belongs to a `devicebench run` still running \(pid \d+"):
        staging.claim(tmp_path / ".same.processes", {"plan": 1})
    first.release(remove=False)
    staging.claim(tmp_path / ".same.processes", {"plan": 1}).release(remove=True)  # once it is gone: resumed
    assert not (tmp_path / ".same.processes").exists()


def test_until_needs_two_environments_and_a_bound(tmp_path):
    plan = plan_of("test_row")
    with pytest.raises(DevicebenchError, match="--until needs two environments"):
        run(plan, tmp_path, "x", environments=ENVS[:1], until_target=0.05, budget_seconds=60)
    with pytest.raises(DevicebenchError, match="--until needs a bound: --budget"):
        run(plan, tmp_path, "x", until_target=0.05)
    with pytest.raises(DevicebenchError, match="no row selected"):
        run(coordinator.Plan((), RowOptions()), tmp_path, "x")



@pytest.mark.slow
def test_two_runs_of_one_name_started_together_give_one_refusal_and_one_whole_result(tmp_path):
    import os
    import subprocess
    import time

    # The first run's worker waits for a file before it starts, so the first run is surely alive (holding its
    # staging folder) when the second starts: no race decides the test.
    go = tmp_path / "go"
    waiting = tmp_path / "waiting-python"
    # A worker's command is -c CODE TASK; the environment's probe before the run (-c CODE) does not wait.
    waiting.write_text(f'#!/bin/sh\nif [ $# -ge 3 ]; then while [ ! -e "{go}" ]; do sleep 0.05; done; fi\n'
                       f'exec "{sys.executable}" "$@"\n')
    waiting.chmod(0o755)
    variables = {**os.environ, "DEVICEBENCH_WORKLOADS": "tests.tiny_workload",
                 "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    command = [sys.executable, "-m", "devicebench", "run", "--processes", "1", "--name", "same", "--output-dir",
               str(tmp_path / "out")]
    rows = ["--", "--workload", "tiny_linear", "--pipeline", "resident", "--device", "cpu", "--scale", "quick"]
    first = subprocess.Popen([*command, "--env", f"A={waiting}", *rows], env=variables, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    lock = tmp_path / "out" / ".same.processes" / "lock"
    deadline = time.monotonic() + 120
    while not (lock.exists() and lock.read_text().startswith("pid")) and time.monotonic() < deadline:
        time.sleep(0.05)
    second = subprocess.run([*command, "--env", f"A={sys.executable}", *rows], env=variables, capture_output=True,
                            text=True, timeout=120)
    go.write_text("")
    output, _ = first.communicate(timeout=300)
    assert second.returncode == 2 and f"still running (pid {first.pid}" in second.stderr, second.stderr
    assert first.returncode == 0, output
    run, = results.load_run(tmp_path / "out" / "same-A.json").rows
    assert run.test == "test_workload[tiny_linear-resident-cpu]" and len(run.processes) == 1
    assert not (tmp_path / "out" / ".same.processes").exists()


def test_a_slowdown_planted_in_one_environment_reaches_its_workers_and_no_other(tmp_path, monkeypatch):
    # The planted-change check of the README: a wrapper that sets DEVICEBENCH_SLOWDOWN_FRACTION is one side of an
    # A/B; the coordinator's own environment must not decide it for both.
    monkeypatch.setenv("DEVICEBENCH_WORKLOADS", "tests.tiny_workload")
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1]))
    monkeypatch.delenv("DEVICEBENCH_SLOWDOWN_FRACTION", raising=False)
    slowed = tmp_path / "slowed"
    slowed.write_text(f'#!/bin/sh\nexport DEVICEBENCH_SLOWDOWN_FRACTION=0.05\nexec "{sys.executable}" "$@"\n')
    slowed.chmod(0o755)
    plan = commands.plan_of(argparse.Namespace(row_arguments=[
        "--", "--workload", "tiny_linear", "--pipeline", "resident", "--device", "cpu", "--scale", "quick"]))
    environments = [coordinator.Environment("A", sys.executable), coordinator.Environment("slowed", str(slowed))]
    written = coordinator.run(environments, 1, plan, tmp_path, "p", echo=lambda line: None, round_seconds=0.001)
    planted = {path.stem: [row.extra["planted_slowdown_fraction"] for row in results.load_run(path).rows]
               for path in written}
    assert planted == {"p-A": [0.0], "p-slowed": [0.05]}


def test_a_staging_folder_another_version_left_is_named_as_such_not_resumed(tmp_path):
    folder = tmp_path / ".old.processes"
    folder.mkdir()
    (folder / "plan.json").write_text('{"pytest_args": ["--device", "cpu"], "environ')  # cut off mid-write
    (folder / "A-001.json").write_text("{}")
    with pytest.raises(DevicebenchError, match="another devicebench version's run, which this one cannot resume"):
        staging.claim(folder, {"rows": [], "options": {}})
    (folder / "A-001.json").unlink()
    staging.claim(folder, {"rows": [], "options": {}}).release(remove=True)  # nothing measured: taken over


def test_rows_only_some_environments_measured_are_left_out_of_later_pairs_and_not_judged(monkeypatch, tmp_path):
    started = []

    def run_pair(self, environments, index, rows, spent):
        started.append([row.name for row in rows])
        for env in environments:
            names = [row.name for row in rows if env.label == "A" or row.name != "test_only_a"]
            data = worker_file({name: [1.0] * 5 for name in names})
            self.folder.worker_file(env.label, index).write_text(json.dumps(data))
        self.folder.pair_meta(index).write_text(json.dumps({"seconds": 1.0, "turns": []}))
        return 1.0

    monkeypatch.setattr(coordinator.Pairs, "run_pair", run_pair)
    lines: list[str] = []
    written = run(plan_of("test_both", "test_only_a"), tmp_path, "s", 3, echo=lines.append)
    assert started == [["test_both", "test_only_a"], ["test_both"], ["test_both"]]
    assert any("not judged, and left out of later pairs: test_only_a" in line for line in lines)
    assert [path.name for path in written] == ["s-A.json", "s-B.json"]


def test_processes_one_after_another_stop_where_the_next_would_end_past_the_budget(monkeypatch, tmp_path):
    now = [0.0]

    def worker(env, task, task_file, log):  # a fresh process that measures for 100 s
        Path(task.output).write_text(json.dumps(worker_file({"test_row": [1.0, 1.0, 1.0]})))
        now[0] += 100.0
        return 0

    monkeypatch.setattr(coordinator.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(coordinator, "_run_worker", worker)
    lines: list[str] = []
    written = coordinator.run([ENVS[0]], 12, plan_of("test_row", device="cpu"), tmp_path, "plain",
                              echo=lines.append, budget_seconds=250)
    assert "budget 4m10s spent (3m20s measured; the next process would take about 1m40s): stopping after 2 " \
           "processes" in lines
    assert len(results.load_run(written[0]).rows[0].processes) == 2


def test_a_pairs_summary_line_says_when_its_rows_ran_on_synthetic_data():
    data = worker_file({"test_row": [1.0] * 5})
    assert "synthetic" not in coordinator._summary(data)
    data["rows"][0]["extra"]["data_source"] = "synthetic"
    assert coordinator._summary(data) == "row 100/s (5 rounds) [synthetic data]"
