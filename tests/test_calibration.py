"""This machine's noise measured once (calibration.py) and the verdicts that use it (significance.py, "Calibrated
noise" and "Single-process runs"): planted data, so every test knows the right answer."""

from __future__ import annotations

import json
import math
import re
import shutil
import statistics
from pathlib import Path

import pytest

from devicebench import calibration, cli, compare, results, significance
from devicebench.calibration import Calibration
from devicebench.errors import UsageError
from devicebench.noise import Noise, median_variance, noise_of
from devicebench.results import Row, Run
from pytest_runs import REPO
from test_interleave import paired_row, planted_pairs

RUNS = REPO / "tests" / "runs"
MACHINE = {"node": "box", "cpu_name": "AMD EPYC", "torch_version": "2.14.1", "accelerators": []}


def run_of(*rows, machine: dict = MACHINE) -> Run:
    return Run(Path("planted.json"), dict(machine), "2026-12-01", list(rows))


def calibrated(tmp_path: Path, process_sd: float, pairs: int = 12, seed: int = 1000) -> Calibration:
    """A planted A/A of ``pairs`` worker pairs whose workers differ by ``process_sd``, kept as a calibration."""
    base, cand = (paired_row(row.processes, interleave_id="calibration@1") for row in
                  planted_pairs(seed=seed, pairs=pairs, rounds=10, effect=0.0, process_sd=process_sd, drift_sd=0.05))
    found = Calibration(tmp_path / "calibration.json")
    found.add(run_of(base), run_of(cand), "planted A/A")
    found.save()
    return Calibration.load(tmp_path / "calibration.json")


def test_an_a_a_is_kept_per_row_machine_and_torch_version(tmp_path):
    found = calibrated(tmp_path, process_sd=0.02)
    [entry] = found.entries
    assert entry["pairs"] == 12 and entry["pair_df"] == 12 and entry["process_df"] == 22
    assert entry["rounds_per_worker"] == 10 and entry["how"] == "planted A/A" and entry["test"] == "test_x"
    # Two workers' offsets of sd 2% each: their pair estimate's spread is about 2% x sqrt(2).
    assert 0.015 < entry["pair_log_sd"] < 0.045 and 0.01 < entry["process_log_sd"] < 0.035
    row = paired_row([[0.1] * 10])
    assert found.noise_for(run_of(row), row, calibration.PAIRS).pair_df == 12
    assert found.noise_for(run_of(row), row) is None  # one process: a plain entry is what it would take
    assert found.noise_for(run_of(row, machine={**MACHINE, "torch_version": "2.13.0"}), row, calibration.PAIRS) is None
    assert found.noise_for(run_of(row, machine={**MACHINE, "node": "other-box"}), row, calibration.PAIRS) is None
    assert not list(tmp_path.glob("*.part"))  # written through a temporary file


def test_an_offset_every_pair_of_an_a_a_shares_is_noise_not_a_change_to_hide(tmp_path):
    # Two pairs that agree with each other but not with 1 (an H200 A/A's resnet18_cifar seed: -16.5%, -14.8%):
    # about their own mean they spread ~1%, about zero — what an A/A's B/A is — ~15%, which is what is kept.
    base = paired_row([[1.0] * 5, [1.0] * 5], interleave_id="aa@1")
    cand = paired_row([[math.exp(-0.165)] * 5, [math.exp(-0.148)] * 5], interleave_id="aa@1")
    [entry] = Calibration(tmp_path / "calibration.json").add(run_of(base), run_of(cand), "offset A/A")
    assert entry["pair_df"] == 2
    assert entry["pair_log_sd"] == pytest.approx(math.sqrt((0.165 ** 2 + 0.148 ** 2) / 2))


def test_calibrating_from_the_same_runs_again_does_not_count_them_twice(tmp_path):
    found = calibrated(tmp_path, process_sd=0.02)
    base, cand = (paired_row(row.processes, interleave_id="calibration@1") for row in
                  planted_pairs(seed=1000, pairs=12, rounds=10, effect=0.0, process_sd=0.02, drift_sd=0.05))
    [(entry, said)] = found.add_explained(run_of(base), run_of(cand), "again")
    assert entry["pairs"] == 12 and entry["how"] == "again" and len(found.entries) == 1
    assert said == "these runs were already in it: the entry is theirs alone now (12 pair(s) before, 12 now)"


def test_calibrate_says_per_row_whether_it_pooled_or_replaced(tmp_path):
    # The command used to say "pooled with earlier ones" of every row, also of one it replaced.
    first = Calibration(tmp_path / "first.json")
    base, cand = (paired_row(row.processes, interleave_id="calibration@1") for row in
                  planted_pairs(seed=1000, pairs=12, rounds=10, effect=0.0, process_sd=0.02, drift_sd=0.05))
    [(_, said)] = first.add_explained(run_of(base), run_of(cand), "planted A/A")
    assert said == "its first calibration"
    found = calibrated(tmp_path, process_sd=0.02)  # the same: 12 pairs, 10 rounds a worker, from calibration@1
    for rounds, expected in ((15, "pooled with 12 earlier pair(s)"),
                             (30, "replaces an earlier entry of 12 pair(s) (its workers timed 10 rounds, these 30: "
                                  "pooled only within 2x, as round noise differs)")):
        again = Calibration(tmp_path / f"{rounds}.json", json.loads(json.dumps(found.entries)))
        base, cand = (paired_row(row.processes, interleave_id=f"later@{rounds}") for row in
                      planted_pairs(seed=rounds, pairs=4, rounds=rounds, effect=0.0, process_sd=0.02, drift_sd=0.05))
        [(entry, said)] = again.add_explained(run_of(base), run_of(cand), "later")
        assert said == expected
        assert entry["pairs"] == (16 if rounds == 15 else 4)


@pytest.mark.parametrize("text", ["{not json", json.dumps({"calibration_schema": 99, "entries": []})])
def test_an_unreadable_calibration_file_is_refused_by_name_with_the_fix(tmp_path, text):
    path = tmp_path / "calibration.json"
    path.write_text(text)
    with pytest.raises(UsageError, match=r"calibration.json.*delete it and run devicebench calibrate again"):
        Calibration.load(path)


def test_a_calibration_lets_three_pairs_see_what_they_could_not_alone(tmp_path):
    # Workers differ by 2%: three pairs alone have two degrees of freedom, so their detectable change is about
    # five times their spread, over 5%; pooled with a 12-pair calibration (11 more), it is under 5%, and a
    # planted 8% slowdown is found.
    found = calibrated(tmp_path, process_sd=0.02)
    base, cand = planted_pairs(seed=3, pairs=3, rounds=10, effect=math.log(1.08), process_sd=0.02, drift_sd=0.1)
    alone = significance.judge(base, cand)
    pooled = significance.judge(base, cand, noise=found.noise_for(run_of(cand), cand))
    assert alone.detectable > 0.05 and alone.calibration is None
    assert pooled.detectable < 0.05 and pooled.is_regression
    assert "pooled with the calibrated spread" in pooled.noise()


def test_a_calibrated_a_a_of_three_pairs_is_flagged_at_about_the_test_level(tmp_path):
    # 300 A/As of three pairs, each judged with the same calibration of that machine's noise: the pooled test
    # stays at its 5% level (15 expected; 27 would be a clear excess), as a test that used it wrongly would not.
    found = calibrated(tmp_path, process_sd=0.02, pairs=15)
    flagged = 0
    for seed in range(300):
        base, cand = planted_pairs(seed=seed, pairs=3, rounds=10, effect=0.0, process_sd=0.02, drift_sd=0.05)
        flagged += significance.judge(base, cand, noise=found.noise_for(run_of(cand), cand)).significant
    assert 3 <= flagged <= 27


def test_a_run_noisier_than_its_calibration_is_judged_alone_and_says_why(tmp_path):
    found = calibrated(tmp_path, process_sd=0.005)
    base, cand = planted_pairs(seed=4, pairs=4, rounds=10, effect=0.0, process_sd=0.08, drift_sd=0.05)
    verdict = significance.judge(base, cand, noise=found.noise_for(run_of(cand), cand))
    assert "calibration not used: these pairs spread" in verdict.noise() and "recalibrate" in verdict.noise()
    assert verdict.detectable == significance.judge(base, cand).detectable


def test_a_run_quieter_than_its_calibration_pools_it_and_says_the_calibration_is_the_cause(tmp_path):
    # A calibration of 4 pairs made on a busy machine (12%) pooled with a quiet run's 5 pairs turned the run's "no
    # significant change" into "inconclusive": still pooled (judging such runs alone flags A/As beyond 5%, below),
    # but the line names the calibration as the cause and the fix.
    found = calibrated(tmp_path, process_sd=0.12, pairs=4)
    base, cand = planted_pairs(seed=6, pairs=5, rounds=10, effect=0.0, process_sd=0.01, drift_sd=0.05)
    verdict = significance.judge(base, cand, noise=found.noise_for(run_of(cand), cand))
    assert verdict.pooled and "these pairs alone spread significantly less" in verdict.noise()
    assert "recalibrate on a quiet one" in verdict.noise()
    assert verdict.detectable > significance.judge(base, cand).detectable


def test_a_pooled_verdict_shows_the_run_own_spread_beside_the_pooled_one(tmp_path):
    found = calibrated(tmp_path, process_sd=0.02)
    base, cand = planted_pairs(seed=3, pairs=3, rounds=10, effect=0.0, process_sd=0.02, drift_sd=0.1)
    verdict = significance.judge(base, cand, noise=found.noise_for(run_of(cand), cand))
    own = significance.judge(base, cand)
    assert verdict.pooled and verdict.own_spread == own.spread != verdict.spread
    assert (f"spread between pairs {own.spread:.1%} ({verdict.spread:.1%} pooled with the calibration's)"
            in verdict.noise())


def compiled(row: results.Row, compile_cache: str | None) -> results.Row:
    """The row as a compiled (tuned) row whose workers came by their code as ``compile_cache`` says (None: the row
    does not say, as rows of calibrations made before it was recorded)."""
    extra = {**row.extra, "compiled": True}
    if compile_cache is not None:
        extra["compile_cache"] = compile_cache
    return results.Row(row.test, extra)


def test_a_compiled_row_uses_only_a_calibration_whose_workers_came_by_their_code_alike(tmp_path):
    # A calibration of workers that kept their compiled code measures no compile-to-compile spread: pooled with
    # workers that compiled anew, it would claim more than they can know. Refused by name; one of fresh compiles
    # is used; one that did not record it (written by earlier code) is not trusted.
    base, cand = (paired_row(row.processes, interleave_id="calibration@1") for row in
                  planted_pairs(seed=1000, pairs=12, rounds=10, effect=0.0, process_sd=0.005, drift_sd=0.05))
    run_base, run_cand = planted_pairs(seed=5, pairs=3, rounds=10, effect=math.log(1.05), process_sd=0.005,
                                       drift_sd=0.05)
    fresh_base, fresh_cand = compiled(run_base, "fresh"), compiled(run_cand, "fresh")
    verdicts = {}
    for mode in ("kept", "fresh", None):
        found = Calibration(tmp_path / f"{mode}.json")
        found.add(run_of(compiled(base, mode)), run_of(compiled(cand, mode)), f"planted A/A, {mode}")
        found = Calibration(found.path, json.loads(json.dumps(found.entries)))  # as it reads back from the file
        if mode is None:
            for entry in found.entries:
                del entry["compiled_code"]  # written before the field existed
        verdicts[mode] = significance.judge(fresh_base, fresh_cand,
                                            noise=found.noise_for(run_of(fresh_cand), fresh_cand))
    assert verdicts["fresh"].pooled and "pooled with the calibrated spread" in verdicts["fresh"].noise()
    assert not verdicts["kept"].pooled and ("calibration not used: its workers kept their compiled code, these "
                                            "compiled anew (recalibrate with the same --compile-cache)"
                                            in verdicts["kept"].noise())
    assert not verdicts[None].pooled and "its workers compiled in a way it did not record" in verdicts[None].noise()
    assert verdicts["kept"].detectable == significance.judge(fresh_base, fresh_cand).detectable
    # Calibrating fresh compiles later replaces an entry of kept code rather than pooling with it.
    found = Calibration(tmp_path / "replaced.json")
    found.add(run_of(compiled(base, "kept")), run_of(compiled(cand, "kept")), "kept")
    other_base, other_cand = (paired_row(row.processes, interleave_id="calibration@2") for row in (base, cand))
    [(entry, said)] = found.add_explained(run_of(compiled(other_base, "fresh")),
                                          run_of(compiled(other_cand, "fresh")), "fresh")
    assert entry["pairs"] == 12 and entry["compiled_code"] == "fresh" and len(found.entries) == 1
    assert said == "replaces an earlier entry of 12 pair(s) (its compiled code came about otherwise)"


def test_fewer_rounds_than_the_calibration_timed_do_not_use_it(tmp_path):
    found = calibrated(tmp_path, process_sd=0.01)  # 10 rounds per worker
    for entry in found.entries:  # as written before calibrations recorded round noise
        del entry["round_log_sd"], entry["round_df"]
    base, cand = planted_pairs(seed=4, pairs=3, rounds=4, effect=0.0, process_sd=0.01, drift_sd=0.05)
    verdict = significance.judge(base, cand, noise=found.noise_for(run_of(cand), cand))
    assert "4 rounds per worker against its 10" in verdict.noise()


# ------------------------------------------------------------------------------------- one process a side
def single(seconds: float) -> results.Row:
    return paired_row([[seconds] * 5], interleave_id=None)


@pytest.mark.parametrize("ratio, calibrated_sd, claimed", [
    (1.10, None, False),  # uncalibrated: 1.10x is within what processes of the same code have differed by
    (1.10, 0.02, True),  # calibrated at 2%: a 10% change is far outside one process's spread
    (1.03, 0.02, False),  # calibrated at 2%: 3% is inside it
    (2.5, None, True),  # beyond any difference between processes this suite has measured: claimed uncalibrated
    (2.2, 0.40, True),  # a calibration of a drifting machine (40% between processes) does not hide a 2.2x change
])
def test_a_single_process_change_is_claimed_only_beyond_the_noise_it_can_know(ratio, calibrated_sd, claimed):
    noise = None if calibrated_sd is None else Noise(None, 0, calibrated_sd, 20, 5, "2026-12-01", "A/A")
    verdict = significance.judge(single(0.1), single(0.1 * ratio), noise=noise)
    assert verdict.is_regression is claimed
    if calibrated_sd is None and not claimed:
        assert verdict.inconclusive and "no verdict below 2x" in verdict.describe()
        assert "devicebench calibrate" in verdict.noise()
    if calibrated_sd is not None:
        assert "calibrated noise" in verdict.describe() and verdict.interval is not None
    if calibrated_sd == 0.40:
        assert not verdict.significant and "beyond 2x, rounds p=" in verdict.describe()


def test_a_single_process_with_fewer_rounds_than_the_calibration_does_not_use_it():
    noise = Noise(None, 0, 0.02, 20, 40, "2026-12-01", "A/A with --round-time 6s")
    verdict = significance.judge(single(0.1), single(0.11), noise=noise)  # 5 rounds a process against 40
    assert not verdict.is_change and "calibration not used: 5 rounds a process against its 40" in verdict.noise()


def test_an_a_a_never_uses_the_calibration_made_from_its_own_pairs(tmp_path):
    base, cand = planted_pairs(seed=6, pairs=4, rounds=10, effect=0.0, process_sd=0.02, drift_sd=0.05)
    found = Calibration(tmp_path / "calibration.json")
    found.add(run_of(base), run_of(cand), "its own")
    verdict = significance.judge(base, cand, noise=found.noise_for(run_of(cand), cand))
    assert "calibration not used: these are its own pairs" in verdict.noise()
    assert verdict.detectable == significance.judge(base, cand).detectable


def test_two_calibrations_of_a_row_pool_into_one_with_both_degrees_of_freedom(tmp_path):
    found = Calibration(tmp_path / "calibration.json")
    first = planted_pairs(seed=7, pairs=4, rounds=10, effect=0.0, process_sd=0.02, drift_sd=0.05)
    second = [paired_row(row.processes, interleave_id="run@2")
              for row in planted_pairs(seed=8, pairs=6, rounds=10, effect=0.0, process_sd=0.02, drift_sd=0.05)]
    [one] = found.add(run_of(first[0]), run_of(first[1]), "first")
    sd_one = one["pair_log_sd"]
    [alone] = Calibration(tmp_path / "other.json").add(run_of(second[0]), run_of(second[1]), "second")
    [both] = found.add(run_of(second[0]), run_of(second[1]), "second")
    assert both["pairs"] == 10 and both["pair_df"] == 4 + 6 and both["sources"] == ["run@1", "run@2"]
    assert both["pair_log_sd"] == pytest.approx(math.sqrt((4 * sd_one ** 2 + 6 * alone["pair_log_sd"] ** 2) / 10))
    assert both["how"] == "first; then second" and len(found.entries) == 1


def planted_a_a_files(tmp_path: Path) -> list[str]:
    """The two files of a planted A/A of four worker pairs, as devicebench run writes them."""
    base, cand = planted_pairs(seed=9, pairs=4, rounds=10, effect=0.0, process_sd=0.02, drift_sd=0.05)
    files = []
    for label, row in (("A", base), ("B", cand)):
        bench = {"name": "test_x", "extra_info": {**row.extra, "valid_samples": 10, "batch_size": 10,
                                                   "valid_batch_size": 10, "samples_per_s": 1000.0}}
        path = tmp_path / f"aa-{label}.json"
        path.write_text(json.dumps({"devicebench": {"schema": 3}, "machine_info": MACHINE, "benchmarks": [bench]}))
        files.append(str(path))
    return files


@pytest.mark.parametrize("options, pairs, compile_cache, pinned", [
    ([], 6, "kept", True),
    (["--budget", "10m"], 100, "kept", True),
    (["--processes", "3"], 3, "kept", True),
    (["--pin-rounds", "off"], 6, "kept", False)])
def test_calibrate_runs_its_default_pairs_or_as_many_as_the_budget_allows(tmp_path, monkeypatch, options, pairs,
                                                                          compile_cache, pinned):
    asked = {}

    def run(environments, processes, plan, output_dir, name, **options):
        asked.update(processes=processes, pythons={env.python for env in environments}, plan=plan,
                     pinned=options["pin_rounds"])
        return [Path(path) for path in planted_a_a_files(tmp_path)]

    monkeypatch.setattr("devicebench.coordinator.run", run)
    target = tmp_path / "calibration.json"
    assert cli.main(["calibrate", *options, "--calibration", str(target), "--", "--device", "cpu"]) == 0
    assert asked["processes"] == pairs and len(asked["pythons"]) == 1  # one Python against itself
    assert asked["pinned"] is pinned
    assert {row.device for row in asked["plan"].rows} == {"cpu"} and asked["plan"].compile_cache() == compile_cache
    assert Calibration.load(target).entries[0]["how"].startswith("devicebench calibrate, round time ")


def plain_run_file(tmp_path: Path, medians: list[float], name: str = "plain.json") -> Path:
    """A run of fresh processes of one Python, as devicebench run of one environment writes it: five rounds each."""
    row = planted_pairs(seed=9, pairs=2, rounds=5, effect=0.0, process_sd=0.02, drift_sd=0.05)[0]
    bench = {"name": "test_x", "extra_info": {
        **row.extra, "valid_samples": 10, "batch_size": 10, "valid_batch_size": 10, "samples_per_s": 1000.0,
        "processes": [{"round_seconds": times, "train_seconds": times} for times in
                      ([median * factor for factor in (0.99, 1.0, 1.0, 1.01, 1.02)] for median in medians)]}}
    path = tmp_path / name
    path.write_text(json.dumps({"devicebench": {"schema": 3}, "machine_info": MACHINE, "benchmarks": [bench]}))
    return path


@pytest.mark.parametrize("options, processes", [
    (["--round-time", "0"], 12), (["--round-time", "0", "--budget", "10m"], 100),
    (["--round-time", "0", "--processes", "4"], 4)])
def test_calibrate_with_round_time_0_runs_plain_processes_one_after_another(tmp_path, monkeypatch, capsys,
                                                                            options, processes):
    # As plain pytest runs are timed: fresh processes of one Python, the scale's rounds, not pinned, each
    # compiling anew (coordinator.run does so for one environment); their medians' spread is kept.
    asked = {}
    medians = [1.0, 1.04, 0.98, 1.01]

    def run(environments, count, plan, output_dir, name, **options):
        asked.update(environments=environments, count=count, options=options)
        return [plain_run_file(tmp_path, medians)]

    monkeypatch.setattr("devicebench.coordinator.run", run)
    target = tmp_path / "calibration.json"
    assert cli.main(["calibrate", *options, "--calibration", str(target), "--", "--device", "cpu"]) == 0
    assert len(asked["environments"]) == 1 and asked["count"] == processes
    assert "pin_rounds" not in asked["options"] and "round_seconds" not in asked["options"]
    assert asked["options"]["budget_seconds"] == (600 if "--budget" in options else None)
    [entry] = Calibration.load(target).entries
    assert entry["pairs"] == 0 and entry["pair_log_sd"] is None and entry["processes"] == 4
    assert entry["process_df"] == 3
    assert entry["process_log_sd"] == pytest.approx(statistics.stdev(math.log(m) for m in medians))
    out = capsys.readouterr().out
    assert "test_x: its first calibration" in out and "calibrated" not in out
    assert "4 plain processes, between processes" in out
    # A second calibration pools; the noise then says how many processes it rests on.
    assert cli.main(["calibrate", *options, "--calibration", str(target), "--", "--device", "cpu"]) == 0
    assert "test_x: pooled with 4 plain process(es)" in capsys.readouterr().out
    [entry] = Calibration.load(target).entries
    assert entry["processes"] == 8 and entry["process_df"] == 6
    assert noise_of(entry).describe().endswith("from 8 plain processes")
    assert cli.main(["calibrate", "--round-time", "0", "--pin-rounds", "pair", "--calibration", str(target),
                     "--", "--device", "cpu"]) == 2
    assert "--pin-rounds pair belongs to worker pairs" in capsys.readouterr().err


def test_a_calibration_of_plain_processes_and_one_of_worker_pairs_are_kept_side_by_side(tmp_path):
    found = Calibration(tmp_path / "calibration.json")
    plain = results.load_run(plain_run_file(tmp_path, [1.0, 1.04, 0.98]))
    assert [said for _, said in found.add_processes(plain, "plain")] == ["its first calibration"]
    first, second = (results.load_run(Path(path)) for path in planted_a_a_files(tmp_path))
    assert [said for _, said in found.add_explained(first, second, "pairs")] == ["its first calibration"]
    assert len(found.entries) == 2
    # A verdict of one process a side finds the plain entry; one of worker pairs, the pairs'.
    assert found.noise_for(plain, plain.rows[0], calibration.PLAIN).processes == 3
    assert found.noise_for(plain, plain.rows[0], calibration.PAIRS).pairs == 4


def test_calibrate_from_runs_keeps_an_a_a_already_run_and_refuses_runs_without_pairs(tmp_path, capsys):
    files = planted_a_a_files(tmp_path)
    target = tmp_path / "calibration.json"
    assert cli.main(["calibrate", "--from-runs", *files, "--calibration", str(target)]) == 0
    out = capsys.readouterr().out
    assert "calibration of 1 row(s) written" in out and ": its first calibration\n" in out
    assert Calibration.load(target).entries[0]["pairs"] == 4
    assert cli.main(["calibrate", "--from-runs", str(RUNS / "aa_first.json"), str(RUNS / "aa_second.json"),
                     "--calibration", str(target)]) == 2
    assert "not a run of worker pairs" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ the commands
def frozen_calibration(tmp_path: Path, run_file: str | Path, process_sd: float, processes: int = 21) -> Path:
    """A calibration of plain processes of every row of a run's machine and torch version (what calibrate
    --round-time 0 would keep) from ``processes`` processes; ``run_file``: a frozen run's name, or a path."""
    run = results.load_run(RUNS / run_file)
    entries = [{"machine": calibration._machine(run), "torch_version": run.torch_version,
                "identity": calibration._jsonable(row.identity.fields()), "test": row.test, "pairs": 0,
                "processes": processes, "pair_log_sd": None, "pair_df": 0, "process_log_sd": process_sd,
                "process_df": processes - 1,
                "rounds_per_worker": 10, "measured": "2026-12-01T10:00:00", "how": "planted"} for row in run.rows]
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps({"calibration_schema": calibration.CALIBRATION_SCHEMA, "entries": entries}))
    return path


def test_the_gate_on_single_processes_fails_on_a_calibrated_change_and_says_what_an_uncalibrated_one_needs(
        tmp_path, capsys):
    pair = [str(RUNS / "cpu_torch_2.13.json"), str(RUNS / "cpu_torch_2.14.json")]  # a planted 10% slowdown
    assert cli.main(["compare", *pair, "--fail-on-regression", "--calibration", str(tmp_path / "none.json")]) == 2
    out = capsys.readouterr().out
    assert "no verdict below 2x" in out and "run devicebench calibrate --round-time 0 once" in out
    path = frozen_calibration(tmp_path, "cpu_torch_2.14.json", process_sd=0.02)
    assert cli.main(["compare", *pair, "--fail-on-regression", "--calibration", str(path)]) == 1
    out = capsys.readouterr().out
    assert "1.10x slower (p=" in out and "calibrated noise" in out
    assert cli.main(["compare", *pair, "--fail-on-regression", "--calibration", str(path),
                     "--threshold", "20%"]) == 0  # its whole interval (1.04-1.17x) inside 20%
    assert "below threshold" in capsys.readouterr().out


def test_one_process_a_side_is_not_judged_with_a_calibration_of_too_few_processes(tmp_path, capsys):
    # Four processes can all miss a placement mode that one process in three lands in (significance.py).
    pair = [str(RUNS / "cpu_torch_2.13.json"), str(RUNS / "cpu_torch_2.14.json")]  # a planted 10% slowdown
    for processes, code in ((9, 2), (11, 1)):  # 8 degrees of freedom (the gate cannot judge), then 10
        path = frozen_calibration(tmp_path, "cpu_torch_2.14.json", process_sd=0.02, processes=processes)
        assert cli.main(["compare", *pair, "--fail-on-regression", "--calibration", str(path)]) == code
        out = capsys.readouterr().out
        said = "its spread between processes rests on 8 degrees of freedom and one process a side needs 10 (11 plain"
        assert (said in out) == (processes == 9) and ("calibrated noise" in out) == (processes == 11)


def test_a_calibration_of_worker_pairs_does_not_judge_one_process_a_side(tmp_path, capsys):
    # Paired workers wait out each other's rounds; plain runs do not, and spread otherwise (calibration.py).
    pair = [str(RUNS / "cpu_torch_2.13.json"), str(RUNS / "cpu_torch_2.14.json")]
    path = frozen_calibration(tmp_path, "cpu_torch_2.14.json", process_sd=0.02)
    data = json.loads(path.read_text())
    for entry in data["entries"]:
        entry.update(pairs=11, pair_log_sd=0.02, pair_df=11)
    path.write_text(json.dumps(data))
    assert cli.main(["compare", *pair, "--fail-on-regression", "--calibration", str(path)]) == 2
    assert "run devicebench calibrate --round-time 0 once" in capsys.readouterr().out


def test_history_marks_a_calibrated_step_and_leaves_an_uncalibrated_one_open(tmp_path, capsys):
    for name in ("cpu_torch_2.14.json", "cpu_torch_2.13.json"):
        shutil.copy(RUNS / name, tmp_path)
    path = frozen_calibration(tmp_path, "cpu_torch_2.14.json", process_sd=0.02)
    assert cli.main(["history", str(tmp_path), "--fail-on-regression", "--calibration", str(path)]) == 1
    assert "REGRESSION 1.10x slower" in capsys.readouterr().out
    assert cli.main(["history", str(tmp_path), "--fail-on-regression", "--calibration",
                     str(tmp_path / "none.json")]) == 2  # it cannot judge that step: the gate fails closed
    captured = capsys.readouterr()
    assert "(inconclusive)" in captured.out and "a step above is inconclusive" in captured.err


def test_info_lists_this_machines_calibrated_rows(tmp_path, capsys, monkeypatch):
    path = frozen_calibration(tmp_path, "cpu_torch_2.14.json", process_sd=0.02)
    run = results.load_run(RUNS / "cpu_torch_2.14.json")
    monkeypatch.setattr("devicebench.environment.machine_key", lambda: run.machine_key)
    assert cli.main(["info", "--calibration", str(path)]) == 0
    out = capsys.readouterr().out
    assert "calibration: 2 row(s) of this machine" in out and "test_mnist_mlp[cpu-seed] · standard" in out
    assert "standard · torch 2.14.1: 21 plain processes, between processes 2.0%" in out
    # An entry of worker pairs that records its round noise says how its pair spread divides.
    data = json.loads(path.read_text())
    data["entries"][0].update(pairs=11, pair_df=11, pair_log_sd=math.log(1.05), round_log_sd=math.log(1.12),
                              round_df=90, rounds_per_worker=10)
    path.write_text(json.dumps(data))
    assert cli.main(["info", "--calibration", str(path)]) == 0
    per_process = math.sqrt(math.log(1.05) ** 2 - math.pi / 2 * math.log(1.12) ** 2 / 10)
    out = capsys.readouterr().out
    assert (f"spread between pairs 5.0% at 10 rounds ({math.expm1(per_process):.1%} per process; a round's B/A "
            f"varies 12.0%)") in out
    # ... and what it is worth to a run: three pairs of that spread pooled with its 11 degrees of freedom.
    three = math.expm1(significance.detection_factor(13) * math.log(1.05) / math.sqrt(3))
    assert f"; 3 pairs pooled with it detect {three:.1%}" in out and 0.05 < three < 0.1


def test_a_calibration_records_round_noise_and_tells_apart_the_noise_more_rounds_remove():
    # An A/A whose workers differ by 2% and whose rounds vary 10% about their pair's: the round noise is measured
    # about each pair's own, so the per-process part is what is left of the pair spread.
    base, cand = planted_pairs(seed=21, pairs=40, rounds=20, effect=0.0, process_sd=0.02, drift_sd=0.0,
                               round_sd=0.1 / math.sqrt(2))
    [entry] = Calibration(Path("c.json")).add(run_of(base), run_of(cand), "planted A/A")
    assert entry["round_log_sd"] == pytest.approx(0.1, rel=0.1) and entry["round_df"] == 40 * 19
    noise = Calibration(Path("c.json"), [entry]).noise_for(run_of(cand), cand)
    per_process = noise.per_process_variance()
    assert math.sqrt(per_process) == pytest.approx(0.02 * math.sqrt(2), rel=0.35)
    # At its own rounds the model gives the measured pair spread back; at four times the rounds, the round part is
    # a quarter of what it was, the per-process part unchanged; at fewer rounds, more.
    assert noise.pair_variance(20) == pytest.approx(entry["pair_log_sd"] ** 2)
    round_part = noise.pair_variance(20) - per_process
    assert noise.pair_variance(80) == pytest.approx(per_process + round_part / 4)
    assert noise.pair_variance(5) == pytest.approx(per_process + round_part * 4)
    # A calibration written before round noise was recorded holds only at about its own rounds.
    old = Noise(0.03, 10, 0.05, 20, 40, "2026-12-01", "A/A")
    assert old.pair_variance(40) == old.pair_variance(400) == pytest.approx(0.03 ** 2)
    assert old.pair_variance(19) is None and old.per_process_variance() is None



def test_round_noise_never_says_more_than_the_pairs_showed():
    # Rounds whose times jump between levels (H200, pinned resnet18_cifar seed: rounds vary 20.7%, yet four pairs
    # of 5 rounds spread 2.6%) would make the median model predict pairs 11.6% apart. At its own rounds the
    # calibration is the pair spread it measured, all of it round noise; at twice the rounds, half the variance.
    noise = Noise(0.026, 4, 0.15, 6, 5, "2026-12-03", "A/A", round_log_sd=0.207, round_df=16)
    assert median_variance(0.207, 5) > 10 * 0.026 ** 2
    assert noise.per_process_variance() == 0.0
    assert noise.pair_variance(5) == pytest.approx(0.026 ** 2)
    assert noise.pair_variance(10) == pytest.approx(0.026 ** 2 / 2)
    # Where the pairs spread more than their rounds explain, the rounds' own figure stands (and the rest is per
    # process), as before.
    wider = Noise(0.05, 10, 0.15, 6, 10, "2026-12-03", "A/A", round_log_sd=0.05, round_df=90)
    assert wider.round_variance() == pytest.approx(median_variance(0.05, 1))
    assert wider.pair_variance(10) == pytest.approx(0.05 ** 2)


def test_pinned_and_unpinned_calibrations_of_a_row_are_kept_apart(tmp_path):
    # Rounds pinned to a core are another experiment (schema.PINNED_ROUNDS): each calibrates its own entry, and a
    # run is judged with the one made its way.
    found = Calibration(tmp_path / "calibration.json")
    free = planted_pairs(seed=26, pairs=4, rounds=10, effect=0.0, process_sd=0.02, drift_sd=0.0, round_sd=0.05)
    pinned = [Row(row.test, {**paired_row(row.processes, interleave_id="run@2").extra, "round_core": 3})
              for row in planted_pairs(seed=27, pairs=6, rounds=10, effect=0.0, process_sd=0.02, drift_sd=0.0,
                                       round_sd=0.05)]
    [one] = found.add(run_of(free[0]), run_of(free[1]), "free")
    [two] = found.add(run_of(pinned[0]), run_of(pinned[1]), "pinned")
    assert found.entries == [one, two] and (one["pairs"], two["pairs"]) == (4, 6)
    assert two["identity"]["pinned_rounds"] is True and "pinned_rounds" not in one["identity"]
    assert found.noise_for(run_of(pinned[1]), pinned[1]).pairs == 6
    assert found.noise_for(run_of(free[1]), free[1]).pairs == 4


def test_a_compare_says_when_its_calibration_pinned_rounds_the_other_way(tmp_path):
    # A calibration made before runs pinned their rounds (or with --pin-rounds off) does not judge pinned pairs,
    # and the verdict says why rather than looking uncalibrated.
    found = Calibration(tmp_path / "calibration.json")
    free = [paired_row(row.processes, interleave_id="cal@1") for row in
            planted_pairs(seed=28, pairs=6, rounds=10, effect=0.0, process_sd=0.02, drift_sd=0.0, round_sd=0.05)]
    found.add(run_of(free[0]), run_of(free[1]), "free A/A")
    base, cand = (Row(row.test, {**paired_row(row.processes, interleave_id="run@9").extra, "round_core": 2})
                  for row in planted_pairs(seed=29, pairs=3, rounds=10, effect=0.0, process_sd=0.02, drift_sd=0.0,
                                           round_sd=0.05))
    base_run, cand_run = run_of(base), run_of(cand)
    [table] = compare.change_tables([base_run, cand_run], 0.05, found)
    assert "calibration not used: its rounds were not pinned, these pinned to a core" in table.verdicts[1].noise()
    assert found.pinned_otherwise(base_run, base, cand_run, cand) is not None
    # A calibration of the same way, or none of the row at all: nothing to say.
    assert Calibration(tmp_path / "none.json").pinned_otherwise(base_run, base, cand_run, cand) is None
    assert found.pinned_otherwise(run_of(free[0]), free[0], run_of(free[1]), free[1]) is None

def test_two_calibrations_pool_their_round_noise_too(tmp_path):
    found = Calibration(tmp_path / "calibration.json")
    first = planted_pairs(seed=22, pairs=4, rounds=10, effect=0.0, process_sd=0.02, drift_sd=0.0, round_sd=0.05)
    second = [paired_row(row.processes, interleave_id="run@2")
              for row in planted_pairs(seed=23, pairs=6, rounds=10, effect=0.0, process_sd=0.02, drift_sd=0.0,
                                       round_sd=0.05)]
    [one] = found.add(run_of(first[0]), run_of(first[1]), "first")
    [alone] = Calibration(tmp_path / "other.json").add(run_of(second[0]), run_of(second[1]), "second")
    [both] = found.add(run_of(second[0]), run_of(second[1]), "second")
    assert both["round_df"] == one["round_df"] + alone["round_df"] == 10 * 9
    assert both["round_log_sd"] == pytest.approx(math.sqrt((36 * one["round_log_sd"] ** 2
                                                            + 54 * alone["round_log_sd"] ** 2) / 90))


def test_a_run_timing_more_rounds_than_the_calibration_is_judged_with_the_round_noise_it_has():
    # Calibrated at 10 rounds: pairs spread 3%, nearly all of it round noise. A run of 40 rounds a worker pools
    # the variance a pair has at 40 rounds, so it can detect a smaller change than at the calibration's 10.
    noise = Noise(0.03, 20, 0.05, 20, 10, "2026-12-01", "A/A", round_log_sd=0.075, round_df=180)
    base, cand = planted_pairs(seed=24, pairs=3, rounds=40, effect=0.0, process_sd=0.002, drift_sd=0.0,
                               round_sd=0.075 / math.sqrt(2))
    verdict = significance.judge(base, cand, noise=noise)
    assert verdict.pooled and "pooled with the calibrated spread at 40 rounds" in verdict.noise()
    without_rounds = Noise(0.03, 20, 0.05, 20, 10, "2026-12-01", "A/A")
    assert verdict.detectable < 0.75 * significance.judge(base, cand, noise=without_rounds).detectable
    # Fewer rounds than half the calibration's: with round noise known, it is used (and says its larger spread).
    short_base, short_cand = planted_pairs(seed=25, pairs=3, rounds=4, effect=0.0, process_sd=0.002, drift_sd=0.0,
                                           round_sd=0.075 / math.sqrt(2))
    short = significance.judge(short_base, short_cand, noise=noise)
    assert short.pooled and short.detectable > verdict.detectable
    assert not significance.judge(short_base, short_cand, noise=without_rounds).pooled


def test_a_row_that_three_pairs_could_only_just_reach_gets_more_pairs_of_fewer_rounds():
    """mnist_mlp resident on the H200, rounds pinned (the kept calibration: 16 pairs of 45 rounds, pairs 2.72%,
    rounds 10.5%): three pairs would reach 5% at the gate's level over 9 rows only with thousands of rounds a
    worker; it gets the rounds where its round noise is down to its per-process part instead."""
    from devicebench import until

    noise = Noise(0.0272, 15, 0.05, 20, 45, "2026-12-03", "A/A", round_log_sd=0.1054, round_df=700)
    per_process = noise.per_process_variance()
    balance = math.ceil(noise.round_variance() / per_process)
    three_pairs = significance.detection_factor(2 + 15, 9) * math.sqrt(noise.pair_variance(balance) / 3)
    assert math.expm1(three_pairs) > 0.9 * 0.05  # at the balance, three pairs do not reach it: more pairs will
    assert 40 < balance < 60 and until.rounds_for_size(noise, 0.05, 38, family=9) == balance
    assert until.rounds_for_size(noise, 0.05, 80, family=9) == 80  # never fewer than --round-time gives


@pytest.mark.parametrize("pair_sd, round_sd, default, expected", [
    # resnet18_cifar resident on the H200: reaches 5% in two pairs at the scale's rounds; not 33 of them.
    (0.0049, 0.0124, 33, "few"),
    # mnist_mlp seed: all round noise; more rounds than --round-time's 10 reach 10% (asked 9%) in three pairs.
    (0.0613, 0.1543, 10, "three"),
    # per-process part larger than three pairs can average: the rounds where round noise is down to it.
    (0.0879, 0.1307, 5, "balance"),
])
def test_an_until_run_sizes_each_row_to_its_question(pair_sd, round_sd, default, expected):
    from devicebench import until

    noise = Noise(pair_sd, 7, 0.05, 20, 10, "2026-12-01", "A/A", round_log_sd=round_sd, round_df=100)
    size = 0.10 if round_sd > 0.1 else 0.05
    rounds = until.rounds_for_size(noise, size, default)
    factor = significance.detection_factor
    if expected == "few":
        assert rounds < 5
        assert math.expm1(factor(1 + 7) * math.sqrt(noise.pair_variance(rounds) / 2)) <= 0.5 * size
    elif expected == "balance":
        per_process = noise.per_process_variance()
        assert math.expm1(factor(2 + 7) * math.sqrt(per_process / 3)) > 0.9 * size  # no rounds would do
        assert rounds == max(default, math.ceil(median_variance(round_sd, 1) / per_process))
    else:
        assert rounds > default
        assert math.expm1(factor(2 + 7) * math.sqrt(noise.pair_variance(rounds) / 3)) <= 0.9 * size
        assert math.expm1(factor(2 + 7) * math.sqrt(noise.pair_variance(rounds - 1) / 3)) > 0.9 * size
    assert until.rounds_for_size(Noise(pair_sd, 7, 0.05, 20, 10, "d", "A/A"), size, default) is None


MADVISE = {"transparent_hugepages": "madvise", "allocator_environment": {}}
ALWAYS = {"transparent_hugepages": "always", "allocator_environment": {}}


def test_a_calibration_made_under_other_host_memory_settings_is_not_used_and_the_verdict_says_why(tmp_path):
    # A seed row pays a page fault per 4 KiB of every batch its DataLoader collates, or per 2 MiB with huge pages:
    # a host whose huge pages were switched is another host for it (host.py).
    found = Calibration(tmp_path / "calibration.json")
    aa = [paired_row(row.processes, interleave_id="cal@1") for row in
          planted_pairs(seed=30, pairs=6, rounds=10, effect=0.0, process_sd=0.02, drift_sd=0.0, round_sd=0.05)]
    madvise_machine = {**MACHINE, "host_memory": MADVISE}
    [entry] = found.add(run_of(aa[0], machine=madvise_machine), run_of(aa[1], machine=madvise_machine), "A/A")
    assert entry["host_memory"] == MADVISE
    base, cand = (paired_row(row.processes, interleave_id="run@9") for row in
                  planted_pairs(seed=31, pairs=3, rounds=10, effect=0.0, process_sd=0.02, drift_sd=0.0,
                                round_sd=0.05))
    same = [run_of(base, machine=madvise_machine), run_of(cand, machine=madvise_machine)]
    other = [run_of(base, machine={**MACHINE, "host_memory": ALWAYS}),
             run_of(cand, machine={**MACHINE, "host_memory": ALWAYS})]
    assert compare.change_tables(same, 0.05, found)[0].verdicts[1].pooled  # with the calibration's pairs
    [table] = compare.change_tables(other, 0.05, found)
    assert not table.verdicts[1].pooled  # three pairs alone
    assert ("calibration not used: calibrated under other host memory settings than these runs' "
            "(transparent_hugepages madvise -> always); run devicebench calibrate under these") in table.verdicts[1].noise()
    # Two runs made under different settings: no calibration describes both sides, whichever one matches.
    mixed = [same[0], other[1]]
    [table] = compare.change_tables(mixed, 0.05, found)
    assert not table.verdicts[1].pooled
    assert ("calibration not used: the two runs were made under different host memory settings "
            "(transparent_hugepages madvise -> always), which no calibration describes both of"
            ) in table.verdicts[1].noise()
    # Files from before the settings were recorded, on either side, keep using the calibration.
    unknown = [run_of(base), run_of(cand)]
    assert compare.change_tables(unknown, 0.05, found)[0].verdicts[1].pooled
    assert found.host_memory_otherwise(*same[:1], base, same[1], cand) is None


def test_an_a_a_across_host_memory_settings_is_refused_and_a_new_setting_replaces_the_entry(tmp_path):
    found = Calibration(tmp_path / "calibration.json")
    aa = [paired_row(row.processes, interleave_id=f"cal@{seed}") for seed in (32, 33) for row in
          planted_pairs(seed=seed, pairs=4, rounds=10, effect=0.0, process_sd=0.02, drift_sd=0.0, round_sd=0.05)]
    with pytest.raises(UsageError, match=r"different host memory settings \(transparent_hugepages madvise -> always\)"
                       r"; calibrate from two runs made under the same ones"):
        found.add(run_of(aa[0], machine={**MACHINE, "host_memory": MADVISE}),
                  run_of(aa[1], machine={**MACHINE, "host_memory": ALWAYS}), "not an A/A")
    found.add(run_of(aa[0], machine={**MACHINE, "host_memory": MADVISE}),
              run_of(aa[1], machine={**MACHINE, "host_memory": MADVISE}), "madvise")
    [(entry, said)] = found.add_explained(run_of(aa[2], machine={**MACHINE, "host_memory": ALWAYS}),
                                          run_of(aa[3], machine={**MACHINE, "host_memory": ALWAYS}), "always")
    assert entry["pairs"] == 4 and len(found.entries) == 1
    assert said == ("replaces an earlier entry of 4 pair(s) (measured under other host memory settings "
                    "(transparent_hugepages madvise -> always))")
    # An A/A from files that did not record the settings pools with it, and the entry keeps what it knew.
    old_files = [paired_row(row.processes, interleave_id="cal@34") for row in
                 planted_pairs(seed=34, pairs=3, rounds=10, effect=0.0, process_sd=0.02, drift_sd=0.0, round_sd=0.05)]
    [(entry, said)] = found.add_explained(run_of(old_files[0]), run_of(old_files[1]), "old files")
    assert said == "pooled with 4 earlier pair(s)" and entry["pairs"] == 7 and entry["host_memory"] == ALWAYS


def test_an_until_run_sizes_rounds_only_from_a_calibration_of_its_host_memory_settings():
    from devicebench import until

    entry = {"machine": ["box", "AMD EPYC", []], "torch_version": "2.14.1", "identity": {"pipeline": "seed"},
             "test": "test_x", "pairs": 7, "pair_log_sd": 0.0879, "pair_df": 7, "process_log_sd": 0.05,
             "process_df": 20, "rounds_per_worker": 10, "measured": "2026-12-01", "how": "A/A", "sources": [],
             "compiled_code": None, "round_log_sd": 0.1307, "round_df": 100, "host_memory": MADVISE}
    wanted = until.rounds_wanted(Calibration(Path("unused.json"), [entry]), until.UntilTarget(0.05))
    row = {"machine": entry["machine"], "torch_version": "2.14.1", "identity": {"pipeline": "seed"},
           "compiled_code": None}
    assert wanted({**row, "host_memory": MADVISE}, 5) is not None
    assert wanted({**row, "host_memory": ALWAYS}, 5) is None  # the rounds --round-time gives
    assert wanted(row, 5) is not None  # a worker that did not say: as before


@pytest.mark.parametrize("change, problem", [
    ({"pair_log_sd": "0.05"}, "has pair_log_sd '0.05', not a spread"),
    ({"pair_log_sd": float("nan")}, "has pair_log_sd nan, not a spread"),
    ({"process_log_sd": -0.05}, "has process_log_sd -0.05, not a spread"),
    ({"rounds_per_worker": 0}, "has no rounds_per_worker"),
    ({"machine": None}, "has no machine (list)"),
    ({"pair_df": 2.5}, "has pair_df 2.5, not a count"),
])
def test_a_damaged_calibration_entry_is_refused_by_name_before_any_verdict_rests_on_it(tmp_path, change, problem):
    path = frozen_calibration(tmp_path, "cpu_torch_2.14.json", process_sd=0.02)
    data = json.loads(path.read_text())
    data["entries"][0].update(change)
    path.write_text(json.dumps(data))
    with pytest.raises(UsageError, match=f"entry 1 {re.escape(problem)}.*delete the file and run devicebench "
                                         f"calibrate again"):
        Calibration.load(path)


def test_a_calibration_path_that_is_no_file_is_refused_without_reading_it(tmp_path):
    link = tmp_path / "calibration.json"
    link.symlink_to("/dev/zero")  # read whole, it filled the memory
    with pytest.raises(UsageError, match="not a regular file"):
        Calibration.load(link)
    with pytest.raises(UsageError, match="is a folder, not a calibration file"):
        Calibration.load(tmp_path)
