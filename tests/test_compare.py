"""Comparison, history, the regression gate and the pytest-benchmark hook, on the frozen runs in tests/runs/."""

from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path

import pytest

from scipy.stats import mannwhitneyu

from devicebench import cli, compare, gate, history, results, runfile, significance
from devicebench.errors import UsageError
from fixtures import compare_hooks
from test_calibration import frozen_calibration

RUNS = Path(__file__).resolve().parent / "runs"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def load(*names: str) -> list[results.Run]:
    return [results.load_run(RUNS / name) for name in names]


def test_mps_machine_against_cuda_machine_is_the_devices_view_with_ratios(capsys):
    assert cli.main(["compare", str(RUNS / "m1_mps.json"), str(RUNS / "gtx1060_cuda.json")]) == 0
    out = capsys.readouterr().out
    assert "view: devices" in out
    assert "Apple M1 GPU · torch 2.6.0 · mps" in out and "NVIDIA GeForce GTX 1060 · torch 2.5.1 · cuda" in out
    view, tables = compare.build_tables(load("m1_mps.json", "gtx1060_cuda.json"))
    assert view == "devices"
    resident = next(t for t in tables if t.workload == "resnet18_cifar")
    verdict = resident.verdicts[[c.device for c in resident.columns].index("cuda")]
    # One process a side, no calibration of either machine: 1.5x is within what processes of the same code have
    # differed by, so the ratio is shown without a verdict (test_calibration.py has the calibrated case).
    assert not verdict.is_change and "1.50x faster" in verdict.describe()
    assert "[single process]" in verdict.describe()  # old single-process files still load, and say so


def test_devices_view_takes_the_baseline_device_the_user_names(capsys):
    assert cli.main(["compare", str(RUNS / "m1_mps.json"), str(RUNS / "gtx1060_cuda.json"),
                     "--view", "devices", "--baseline-device", "cuda"]) == 0
    out = capsys.readouterr().out
    assert "baseline: NVIDIA GeForce GTX 1060 · torch 2.5.1 · cuda" in out and "1.50x slower" in out
    assert cli.main(["compare", str(RUNS / "m1_mps.json"), "--view", "devices", "--baseline-device", "cuda"]) == 2
    assert "no run has cuda rows" in capsys.readouterr().err
    assert cli.main(["compare", str(RUNS / "m1_mps.json"), str(RUNS / "gtx1060_cuda.json"), "--view", "devices",
                     "--fail-on-regression"]) == 2  # a slower device is not a regression


def test_a_a_pair_of_single_processes_gets_no_verdict_and_the_gate_cannot_pass_it(capsys):
    pair = [str(RUNS / "aa_first.json"), str(RUNS / "aa_second.json")]
    assert cli.main(["compare", *pair]) == 0
    out = capsys.readouterr().out
    assert "no verdict below 2x" in out and "no significant regression" not in out
    # The gate could not have seen a 5% change: it fails closed (2) and says what would let it judge.
    assert cli.main(["compare", *pair, "--fail-on-regression"]) == 2
    captured = capsys.readouterr()
    assert "no significant regression" not in captured.out
    assert "row(s) inconclusive (above): their data could not have seen a 5% change" in captured.err
    # Same machine and torch: columns are told apart by file name.
    assert "aa_first" in out and "aa_second" in out


def test_different_workload_versions_are_not_compared(capsys):
    # Nothing of the same experiment to judge: the gate fails closed (2), the notes say what differs.
    assert cli.main(["compare", str(RUNS / "old_workload.json"), str(RUNS / "aa_first.json"), "--view", "change",
                     "--fail-on-regression"]) == 2
    out = capsys.readouterr().out
    assert "not compared" in out and "workload_version 0 -> 1" in out


def test_markdown_output(capsys):
    cli.main(["compare", str(RUNS / "m1_mps.json"), str(RUNS / "gtx1060_cuda.json"), "--markdown"])
    out = capsys.readouterr().out
    assert "| | Apple M1 GPU · torch 2.6.0 · mps |" in out and "|---|---|" in out
    assert "**mnist_mlp · seed · scale standard" in out


def test_bad_files_in_a_folder_are_skipped_with_a_warning_naming_them(tmp_path, capsys):
    folder = tmp_path / "results"
    shutil.copytree(RUNS / "bad", folder / "bad")
    shutil.copy(RUNS / "aa_first.json", folder)
    assert cli.main(["history", str(folder)]) == 0
    err = capsys.readouterr().err
    for name in ("malformed.json", "foreign.json", "newer_schema.json"):
        assert name in err
    assert "newer than this devicebench understands" in err


def test_nothing_readable_is_a_clear_error(capsys):
    assert cli.main(["compare", str(RUNS / "bad")]) == 2
    assert "no readable devicebench runs" in capsys.readouterr().err
    with pytest.raises(UsageError, match="no such file or folder"):
        results.expand(["9999"], RUNS)
    # A path that does not exist is named as such (Python 3.12's rglob raised NotImplementedError on it).
    for missing in (str(RUNS / "missing.json"), "runs/missing.json"):
        with pytest.raises(UsageError, match="no such file or folder"):
            results.expand([missing], RUNS)


def test_run_ids_are_found_under_the_results_folder(tmp_path):
    machine_folder = tmp_path / "Linux-CPython-3.11-64bit"
    machine_folder.mkdir()
    shutil.copy(RUNS / "aa_first.json", machine_folder / "0003_abc_20261121_100000.json")
    assert results.expand(["0003"], tmp_path) == [machine_folder / "0003_abc_20261121_100000.json"]


def test_history_orders_by_torch_version_and_marks_the_regression(tmp_path, capsys):
    runs = tmp_path / "runs"
    runs.mkdir()
    for name in ("cpu_torch_2.14.json", "cpu_torch_2.13.json", "m1_mps.json"):
        shutil.copy(RUNS / name, runs)
    png = tmp_path / "history.png"
    # Single-process runs: the step is claimed on this machine's calibrated noise (test_calibration.py).
    calibrated = frozen_calibration(tmp_path, "cpu_torch_2.14.json", process_sd=0.02)
    assert cli.main(["history", str(runs), "--png", str(png), "--fail-on-regression",
                     "--calibration", str(calibrated)]) == 1
    out = capsys.readouterr().out
    assert out.index("torch 2.13.0") < out.index("torch 2.14.1")
    assert "REGRESSION 1.10x slower" in out and "regression: ci-box" in out
    assert "Apple M1 GPU" in out  # a different machine gets its own table, never merged
    assert png.read_bytes().startswith(PNG_SIGNATURE)
    timelines = history.timelines(results.load_runs([str(runs)]))
    assert len(timelines) == 3  # ci-box cpu, macbook mps, macbook cpu


def test_compare_chart_is_a_valid_png(tmp_path, capsys):
    png = tmp_path / "charts" / "compare.png"
    cli.main(["compare", str(RUNS / "m1_mps.json"), str(RUNS / "gtx1060_cuda.json"), "--png", str(png)])
    data = png.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 5000
    assert not list(png.parent.glob("*.part"))


# ---------------------------------------------------------------------------------- pytest-benchmark hook
class FakeLogger:
    def __init__(self):
        self.lines = []

    def info(self, text, newline=True, **kwargs):
        self.lines.append(text)


class FakeSession:
    def __init__(self):
        self.logger = FakeLogger()


def test_benchmark_compare_hook_pairs_mps_rows_with_local_cuda_rows():
    saved = json.loads((RUNS / "m1_mps.json").read_text())
    local = copy.deepcopy(json.loads((RUNS / "gtx1060_cuda.json").read_text())["machine_info"])
    session = FakeSession()
    compare_hooks.report_and_pair(session.logger, local, saved)
    names = [bench["name"] for bench in saved["benchmarks"]]
    assert names == ["test_mnist_mlp[cuda-seed]", "test_resnet18_cifar[cuda-resident]", "test_mnist_mlp[cpu-seed]"]
    assert saved["benchmarks"][0]["fullname"].endswith("::test_mnist_mlp[cuda-seed]")
    text = "\n".join(session.logger.lines)
    assert "torch_version: 2.6.0 (saved) vs 2.5.1 (this run)" in text
    assert "Apple M1 GPU (mps) row shown as test_mnist_mlp[cuda-seed]" in text
    assert "macbook" in text and "gamer" in text


def test_benchmark_compare_pairs_only_rows_of_the_same_experiment():
    """--benchmark-compare pairs by test id; rows of another configuration are taken out of the pairing."""
    saved_rows = {bench["fullname"]: bench for bench in json.loads((RUNS / "workers0.json").read_text())["benchmarks"]}
    local = {name: copy.deepcopy(bench["extra_info"]) for name, bench in saved_rows.items()}
    changed = next(name for name, extra in local.items() if "workers" in extra)
    local[changed]["workers"] = 8

    class Bench:
        def __init__(self, fullname, extra_info):
            self.fullname, self.extra_info = fullname, extra_info

    class Session:
        benchmarks = [Bench(name, extra) for name, extra in local.items()]
        compared_mapping = {"saved.json": dict(saved_rows)}

    lines = compare_hooks.unpair_unlike_rows(Session)
    assert lines == [f"{saved_rows[changed]['name']}: saved row not shown, another experiment: workers 0 (saved) "
                     f"vs 8"]
    assert set(Session.compared_mapping["saved.json"]) == set(saved_rows) - {changed}


def test_benchmark_compare_hook_leaves_rows_alone_on_a_cpu_only_machine():
    saved = json.loads((RUNS / "m1_mps.json").read_text())
    local = json.loads((RUNS / "aa_first.json").read_text())["machine_info"]
    compare_hooks.report_and_pair(FakeLogger(), local, saved)
    assert saved["benchmarks"][0]["name"] == "test_mnist_mlp[mps-seed]"


# ------------------------------------------------------------------------------- verdicts you can trust (9)
def test_two_device_pair_where_only_cuda_slowed_gates_on_the_cuda_rows_alone(capsys):
    code = cli.main(["compare", str(RUNS / "devices_before.json"), str(RUNS / "devices_after.json"),
                     "--fail-on-regression"])
    out = capsys.readouterr().out
    assert code == 1
    summary = out[out.index("2 significant regression(s) beyond 5%"):]
    assert summary.count("NVIDIA H100 (cuda)") == 2 and "Intel Xeon (cpu)" not in summary
    _, tables = compare.build_tables(load("devices_before.json", "devices_after.json"))
    for table in tables:
        verdict = table.verdicts[1]
        assert verdict.process_level and verdict.processes == (5, 5)
        assert verdict.is_regression is (table.columns[1].device == "cuda"), table.title


def test_a_configuration_change_is_never_a_regression(capsys):
    for first, second in (("workers0.json", "workers8.json"), ("workers8.json", "workers0.json")):
        code = cli.main(["compare", str(RUNS / first), str(RUNS / second), "--view", "change",
                         "--fail-on-regression"])
        out = capsys.readouterr().out
        assert code == 2, out  # never a regression, and nothing the gate can judge: it fails closed
        assert "not compared" in out and "workers" in out and "a different experiment, not a change" in out
        assert "faster" not in out and "slower" not in out


def test_a_a_pair_with_process_level_spread_is_no_significant_change(capsys):
    first, second = load("aa_processes_first.json", "aa_processes_second.json")
    # Rounds taken as independent samples would call these identical setups different:
    pooled = mannwhitneyu(first.rows[0].all_seconds, second.rows[0].all_seconds).pvalue
    assert pooled < 0.001
    code = cli.main(["compare", str(first.path), str(second.path), "--fail-on-regression"])
    out = capsys.readouterr().out
    assert code == 0 and "no significant change (not significant" in out, out
    assert "5 vs 5 processes, spread" in out and "smallest detectable change" in out


def test_too_few_processes_for_the_spread_is_inconclusive_not_a_verdict(capsys):
    first, second = load("aa_noisy_first.json", "aa_noisy_second.json")
    verdict = significance.judge(first.rows[0], second.rows[0])
    assert verdict.inconclusive and not verdict.is_change and verdict.detectable > 0.05
    assert verdict.describe().startswith("no significant change, inconclusive: processes spread too much to "
                                         "detect a 5% change")
    assert cli.main(["compare", str(first.path), str(second.path), "--fail-on-regression"]) == 2
    assert "inconclusive at 5%: " in capsys.readouterr().out
    # A threshold the data could see is judged: nothing beyond it, the gate passes.
    assert cli.main(["compare", str(first.path), str(second.path), "--fail-on-regression", "--threshold",
                     f"{verdict.detectable + 0.05:.2f}"]) == 0


def test_the_threshold_of_one_pipeline_judges_its_rows_alone(capsys):
    """``--threshold seed=10%`` (as ``run --until seed=10%`` sized the seed rows) judges the seed rows at 10% and
    every other row at the default; a row of another pipeline is not loosened by it."""
    first, second = load("aa_noisy_first.json", "aa_noisy_second.json")  # one resident row, ~7-23% detectable
    loose = f"{significance.judge(first.rows[0], second.rows[0]).detectable + 0.05:.2f}"
    gate = ["compare", str(first.path), str(second.path), "--fail-on-regression"]
    assert cli.main([*gate, "--threshold", f"seed={loose}"]) == 2
    assert "inconclusive at 5%: " in capsys.readouterr().out  # a resident row: the seed size is not its
    assert cli.main([*gate, "--threshold", "5%", "--threshold", f"resident={loose}"]) == 0
    assert f"threshold 5% (resident {float(loose):.0%})" in capsys.readouterr().out
    tables = compare.change_tables([first, second], significance.Threshold(0.05, (("resident", float(loose)),)))
    assert tables[0].verdicts[1].threshold == float(loose)


@pytest.mark.parametrize("text, pipeline", [("seed=10%", "seed"), ("tuned=0.1", "tuned"), ("10%", None)])
def test_a_pipeline_threshold_is_read(text, pipeline):
    assert cli._pipeline_size(text) == (pipeline, pytest.approx(0.10))


def test_sizes_read_as_they_were_typed_and_a_pipeline_given_two_sizes_is_refused(capsys):
    assert significance.Threshold(0.004).describe() == "0.4%"  # not rounded into 0%, which --until refuses
    assert significance.Threshold(0.025, (("seed", 0.125),)).option("--until") == "--until 2.5% --until seed=12.5%"
    assert cli.main(["compare", str(RUNS / "aa_first.json"), "--threshold", "seed=5%", "--threshold", "seed=10%"]) == 2
    assert "--threshold: seed given more than one size" in capsys.readouterr().err


def test_a_threshold_naming_no_pipeline_or_two_sizes_for_every_row_is_refused(capsys):
    with pytest.raises(SystemExit):
        cli.main(["compare", str(RUNS / "aa_first.json"), "--threshold", "sead=10%"])
    assert "'sead' is not a pipeline; give one of" in capsys.readouterr().err
    assert cli.main(["compare", str(RUNS / "aa_first.json"), "--threshold", "5%", "--threshold", "10%"]) == 2
    assert "--threshold: 5%, 10% are all sizes for every row; give one size for every row" in capsys.readouterr().err


@pytest.mark.parametrize("text, value", [("5%", 0.05), ("0.05", 0.05), ("12.5%", 0.125), ("0", 0.0)])
def test_threshold_takes_a_percentage_or_a_fraction(text, value):
    assert cli._threshold(text) == pytest.approx(value)


@pytest.mark.parametrize("text, cause", [("5", "'5': a bare number is a fraction (5 would be 500%)"),
                                         ("1", "a bare number is a fraction"), ("150%", "a size from 0 to under 100%"),
                                         ("abc", "'abc'"), ("-1%", "a size from 0 to under 100%"),
                                         ("seed=", "'seed='"), ("seed=2", "'seed=2': a bare number")])
def test_threshold_as_a_bare_number_above_one_is_a_usage_error_naming_both_forms(text, cause, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["compare", str(RUNS / "aa_first.json"), f"--threshold={text}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert cause in err and "give a percentage like 5% or a fraction like 0.05" in err


def test_the_gate_fails_closed_on_an_unreadable_baseline(tmp_path, capsys):
    truncated = tmp_path / "base.json"
    truncated.write_text((RUNS / "cpu_torch_2.13.json").read_text()[:500])  # a download or copy cut off
    assert cli.main(["compare", str(truncated), str(RUNS / "cpu_torch_2.14.json"), "--fail-on-regression"]) == 2
    err = capsys.readouterr().err
    assert f"{truncated}: not readable JSON" in err and "regression gate" in err
    # Without the gate, compare still shows what it can read, warning about the rest.
    assert cli.main(["compare", str(truncated), str(RUNS / "cpu_torch_2.14.json")]) == 0


def test_the_gate_fails_closed_when_no_row_matches_the_baseline(capsys):
    # An M1's mps rows and a GTX 1060's cuda rows are different experiments: nothing for a gate to judge.
    assert cli.main(["compare", str(RUNS / "m1_mps.json"), str(RUNS / "gtx1060_cuda.json"),
                     "--fail-on-regression"]) == 2
    assert "no row of the later runs matches a row of the baseline run" in capsys.readouterr().err


def test_the_gate_fails_closed_on_the_schema_1_h200_reference_against_a_schema_2_run(tmp_path, capsys):
    reference = RUNS / "schema1" / "h200-cuda-standard.json"
    fresh = json.loads(reference.read_text())  # the same machine measured again, as schema 2 writes its rows
    fresh["machine_info"]["devicebench_schema"] = 2
    for bench in fresh["benchmarks"]:
        extra = bench["extra_info"]
        extra.update(schema_version=2, valid_samples=2048, train_seconds=extra["round_seconds"])
    (tmp_path / "fresh.json").write_text(json.dumps(fresh))
    assert cli.main(["compare", str(reference), str(tmp_path / "fresh.json"), "--fail-on-regression"]) == 2
    assert "nothing to judge" in capsys.readouterr().err


REFERENCE = Path(__file__).resolve().parents[1] / "results" / "reference"
H100_REFERENCE = REFERENCE / "h100" / "suite.json"


def compact_compare(capsys, *runs: Path) -> list[str]:
    """``devicebench compare RUN...``'s default view, which must fit a screen: its lines."""
    assert cli.main(["compare", *map(str, runs)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) <= 25, "\n".join(lines)
    return lines


def test_the_h100_and_h200_references_fit_a_screen_with_a_ratio_a_row(capsys):
    lines = compact_compare(capsys, H100_REFERENCE, REFERENCE / "h200" / "suite.json")
    # Both in the current schema: five rows get the H200's ratio to the H100; resnet18_cifar tuned ran without
    # CUDA graphs on the H100 and with them on the H200, another configuration, and one line per run says so.
    assert sum("[single process]" in line and "x faster" in line for line in lines) == 5
    assert sum("UNSTABLE: rounds vary" in line for line in lines) >= 2  # the H100's seed rows, as --details says
    why = [line for line in lines if line.startswith("not side by side: ")]
    assert len(why) == 2 and all("cuda_graphs" in line for line in why)


def test_compare_fits_a_screen_and_says_why_two_runs_do_not_line_up(capsys):
    h100, h200 = H100_REFERENCE, RUNS / "schema1" / "h200-cuda-standard.json"
    lines = compact_compare(capsys, h100, h200)
    why = [line for line in lines if line.startswith("not side by side: ")]
    assert why and all("valid_samples" in line for line in why)
    assert any("rows of result schema 1 have no valid_samples: re-measure that machine" in line for line in why)
    # One line per row and run, each with its figure and its verdict column.
    assert sum(" ms  " in line for line in lines) == 12
    assert cli.main(["compare", str(h100), str(h200), "--details"]) == 0
    assert "processes × rounds" in capsys.readouterr().out  # the full tables, on request


def test_the_summary_after_a_run_has_one_line_a_row_with_the_ratio_to_a_reference(tmp_path):
    from devicebench import summary

    reference = json.loads((RUNS / "cpu_torch_2.13.json").read_text())
    folder = tmp_path / "reference" / "vm"
    folder.mkdir(parents=True)
    (folder / "suite.json").write_text(json.dumps(reference))  # a reference machine's one curated run
    (folder / "experiment.json").write_text(json.dumps(reference))  # any other file there is no reference
    fresh = runfile.migrate(json.loads((RUNS / "cpu_torch_2.14.json").read_text()))
    finished = [(bench["name"], bench["extra_info"]) for bench in fresh["benchmarks"]]
    finished.append(("test_unseen[cpu-resident]", {**finished[0][1], "workload_version": 99, "unstable": True}))
    lines = summary.lines(finished, summary.reference_rows(tmp_path / "reference"))
    assert len(lines) == len(finished)
    for line, (name, extra) in zip(lines, finished):
        assert line.startswith(name) and f"{extra['samples_per_s']:,.0f} samples/s" in line
        assert "epoch " in line and "loader wait " in line and "utilization " in line
    matched = results.Row("x", finished[0][1]).median_seconds
    ratio = results.load_run(folder / "suite.json").rows[0].median_seconds / matched
    assert f"{ratio:.2f}x the speed of reference vm" in lines[0]
    assert len(summary.reference_rows(tmp_path / "reference")) == len(reference["benchmarks"])
    assert "the speed of reference" not in lines[-1] and "UNSTABLE" in lines[-1]  # another experiment: no ratio


def with_counts(tmp_path, name: str, ops: float, kernels: float) -> str:
    """A frozen run with step counts planted in every row."""
    data = json.loads((RUNS / name).read_text())
    for bench in data["benchmarks"]:
        bench["extra_info"].update(ops_per_step=ops, kernels_per_step=kernels, syncs_per_step=None,
                                   allocations_per_step=None, counted_steps=2)
    path = tmp_path / f"counted-{name}"
    path.write_text(json.dumps(data))
    return str(path)


def test_a_change_in_step_counts_is_shown_exactly_and_fails_the_gate_beyond_the_threshold(tmp_path, capsys):
    base = with_counts(tmp_path, "aa_first.json", ops=280, kernels=146)
    same = with_counts(tmp_path, "aa_second.json", ops=280, kernels=146)
    # One process a side: the times are inconclusive (the gate cannot pass them), the counts exact.
    assert cli.main(["compare", base, same, "--fail-on-regression"]) == 2
    assert "counts:" not in capsys.readouterr().out
    more = with_counts(tmp_path, "aa_second.json", ops=296, kernels=148)  # +5.7% ops, +1.4% kernels
    assert cli.main(["compare", base, more, "--fail-on-regression"]) == 1
    out = capsys.readouterr().out
    assert "counts: ops +16 per step (+5.7%), kernels +2 per step (+1.4%)" in out
    assert "counts per step grew: ops +16 per step (+5.7%)" in out and "kernels +2" not in out.split("grew:")[1]
    assert cli.main(["compare", base, more, "--fail-on-regression", "--threshold", "10%"]) == 2
    # A pipeline's own size allows for its timing noise; counts have none, so they keep the size for every row.
    capsys.readouterr()
    assert cli.main(["compare", base, more, "--fail-on-regression", "--threshold", "resident=10%"]) == 1
    assert "counts per step grew: ops +16" in capsys.readouterr().out
    assert cli.main(["compare", base, more, "--details"]) == 0
    assert "ops per step" in capsys.readouterr().out


def test_history_marks_a_torch_version_that_adds_work_per_step(tmp_path, capsys):
    runs = tmp_path / "runs"
    runs.mkdir()
    with_counts(runs, "cpu_torch_2.13.json", ops=280, kernels=146)
    with_counts(runs, "cpu_torch_2.14.json", ops=300, kernels=146)
    assert cli.main(["history", str(runs), "--fail-on-regression", "--calibration", str(tmp_path / "none")]) == 1
    out = capsys.readouterr().out
    assert "[counts: ops +20 per step (+7.1%)]" in out and "counts per step grew: ops +20" in out


def test_the_gate_passes_a_slowdown_significant_alone_that_holm_does_not_keep_and_says_so(capsys, tmp_path):
    # Three rows of four worker pairs; the first reads 1.03x slower at p~0.02 (as the H200's mnist_mlp resident A/A
    # did), the other two nothing: significant alone, not at 5%/3 after the correction, so the gate passes it and
    # names it. Made three times as large (p < 0.001), it fails the gate.

    def run_with(estimates_by_row: dict[str, list[float]], side: str) -> Path:
        benchmarks = []
        for name, estimates in estimates_by_row.items():
            pairs = [[0.1 * math.exp(e if side == "B" else 0.0)] * 3 for e in estimates]
            extra = {"schema_version": 2, "workload": name, "workload_version": 1, "pipeline": "resident",
                     "scale": "quick", "samples_per_round": 100, "valid_samples": 10, "batch_size": 10,
                     "valid_batch_size": 10, "device": "cpu", "device_name": "cpu", "data_source": "synthetic",
                     "train_seconds": [t for times in pairs for t in times],
                     "round_seconds": [t for times in pairs for t in times], "val_seconds": [0.0] * 3 * len(pairs),
                     "loader_wait_fraction": 0.0, "samples_per_s": 1000.0, "interleave_id": "aa@1",
                     "processes": [{"train_seconds": times, "round_seconds": times, "pair": index}
                                   for index, times in enumerate(pairs, 1)]}
            benchmarks.append({"name": f"test_{name}", "fullname": f"benchmarks/x.py::test_{name}",
                               "extra_info": extra, "stats": {"median": 0.1}})
        path = tmp_path / f"{side}-{len(list(tmp_path.iterdir()))}.json"
        path.write_text(json.dumps({"machine_info": {"node": "n", "cpu_name": "c", "torch_version": "2.14.1",
                                                      "devicebench_schema": 2}, "benchmarks": benchmarks}))
        return path

    def gate(first_row: list[float]) -> int:
        rows = {"slowish": first_row, "steady": [0.01, -0.01, 0.005, -0.005], "other": [-0.01, 0.01, 0.0, 0.0]}
        return cli.main(["compare", str(run_with(rows, "A")), str(run_with(rows, "B")), "--fail-on-regression",
                         "--calibration", str(tmp_path / "none.json")])

    assert gate([0.015, 0.045, 0.046, 0.03]) == 0
    out = capsys.readouterr().out
    assert "significant alone, not gated on: " in out and "(not after Holm's correction over the 3 rows judged)" in out
    assert "no significant regression beyond 5%" in out
    assert gate([0.075, 0.085, 0.09, 0.08]) == 1
    # A speed-up significant alone is marked where it is read as well: its own cell, though it gates nothing.
    assert gate([-0.015, -0.045, -0.046, -0.03]) == 0
    cell = next(line for line in capsys.readouterr().out.splitlines() if "x faster (p=" in line)
    assert cell.endswith("(not after Holm's correction over the 3 rows judged)") or \
        "(not after Holm's correction over the 3 rows judged) [" in cell


def _flagged_share(sizing_family: int, rows: int = 6, pairs: int = 6, runs: int = 300) -> float:
    """Seeded runs of ``rows`` rows of worker pairs whose pairs spread just enough for the first row's smallest
    detectable change to be 5% at ``sizing_family``; that row really slowed by 5%, the others not. The share of
    runs in which the gate (Holm over every row) flags it."""
    import random

    rng = random.Random(7)
    spread = math.log(1.05) / significance.detection_factor(pairs - 1, sizing_family) * math.sqrt(pairs)
    base = [[1.0] * 3 for _ in range(pairs)]
    flagged = 0
    for _ in range(runs):
        verdicts = [significance._paired(base, [[math.exp((math.log(1.05) if row == 0 else 0.0)
                                                          + rng.gauss(0, spread))] * 3 for _ in range(pairs)],
                                         0.05, None, set()) for row in range(rows)]
        flagged += 0 in significance.holm(verdicts)
    return flagged / runs


def test_a_row_that_reached_its_size_at_the_gates_level_is_flagged_by_the_gate_four_times_in_five():
    """The promise of "smallest detectable change 5%": the gate flags a 5% change with 80% power. Sized at the
    gate's level over six rows it holds (77 of these 300 runs, 80% by the noncentral t); sized for one row alone,
    as a plain t-test would, the gate over six rows flagged it in 39 of 100."""
    assert _flagged_share(6) >= 0.72
    assert _flagged_share(1) <= 0.5
    verdict = significance._paired([[1.0] * 3] * 6, [[1.0 + 0.01 * k] * 3 for k in range(6)], 0.05, None, set())
    assert verdict.for_family(6).detectable > verdict.detectable and verdict.for_family(1) == verdict
    assert "at the gate's level over 6 rows" in verdict.for_family(6).noise()


def test_compare_notes_a_run_made_under_other_host_memory_settings(capsys, tmp_path):
    # The seed rows pay a page fault per 4 KiB of each batch collated on the host, or per 2 MiB with huge pages:
    # a change between two such runs may be the host's settings, not torch's.
    paths = []
    for name, settings in (("before.json", {"transparent_hugepages": "madvise", "allocator_environment": {}}),
                           ("after.json", {"transparent_hugepages": "madvise",
                                           "allocator_environment": {"LD_PRELOAD": "libjemalloc.so.2"}})):
        data = json.loads((RUNS / "cpu_torch_2.14.json").read_text())
        data["machine_info"]["host_memory"] = settings
        (tmp_path / name).write_text(json.dumps(data))
        paths.append(str(tmp_path / name))
    assert cli.main(["compare", *paths]) == 0
    assert ("note: after.json ran under other host memory settings than before.json (LD_PRELOAD unset -> "
            "libjemalloc.so.2): rows that allocate on the host (seed) move with them") in capsys.readouterr().out
    assert cli.main(["compare", paths[0], paths[0]]) == 0
    assert "host memory" not in capsys.readouterr().out


def test_rows_only_in_the_baseline_say_the_later_runs_lack_them_and_unstable_rows_say_so(capsys, tmp_path):
    # A full run against a one-pipeline run: the baseline's extra row is not "missing from the baseline".
    full = json.loads((RUNS / "cpu_torch_2.14.json").read_text())
    full["benchmarks"][0]["extra_info"].update(unstable=True, unstable_reason="CV 94% (rounds 0.1-0.9 s)")
    one = copy.deepcopy(full)
    one["benchmarks"] = [bench for bench in one["benchmarks"] if "resident" not in bench["name"]]
    (tmp_path / "full.json").write_text(json.dumps(full))
    (tmp_path / "one.json").write_text(json.dumps(one))
    assert cli.main(["compare", str(tmp_path / "full.json"), str(tmp_path / "one.json")]) == 0
    out = capsys.readouterr().out
    assert "the later runs have no row of this identity; their closest row differs in pipeline resident -> seed" in out
    assert "the baseline run has no row" not in out
    assert "UNSTABLE: CV 94% (rounds 0.1-0.9 s)" in out  # the seed row's line, baseline and candidate alike


def test_the_gate_does_not_judge_runs_of_two_machines_and_compare_notes_them(capsys, tmp_path):
    # A CI fleet's runners differ by more than one machine's processes do (DESIGN.md: false regressions of 28-34%).
    other = json.loads((RUNS / "aa_processes_second.json").read_text())
    other["machine_info"]["node"] = "runner-2"
    (tmp_path / "runner-2.json").write_text(json.dumps(other))
    pair = [str(RUNS / "aa_processes_first.json"), str(tmp_path / "runner-2.json")]
    assert cli.main(["compare", *pair, "--fail-on-regression"]) == 2
    captured = capsys.readouterr()
    assert ("note: runner-2.json ran on another machine than aa_processes_first.json (gpubox (Intel Xeon, NVIDIA "
            "H100) -> runner-2 (Intel Xeon, NVIDIA H100)): its changes are the machines' and the code's together"
            ) in captured.out
    assert "the runs come from different machines (above)" in captured.err and "--env old=PY" in captured.err
    assert cli.main(["compare", *pair]) == 0  # without the gate: the ratios, and the note
    assert "ran on another machine" in capsys.readouterr().out
    assert cli.main(["compare", str(RUNS / "aa_processes_first.json"), str(RUNS / "aa_processes_second.json"),
                     "--fail-on-regression"]) == 0
    assert "another machine" not in capsys.readouterr().out
    # One machine under a container's changing hostname, named by DEVICEBENCH_MACHINE on both sides: judged.
    named = []
    for name, source in (("box-a.json", "aa_processes_first.json"), ("box-b.json", "aa_processes_second.json")):
        data = json.loads((RUNS / source).read_text())
        data["machine_info"].update(node=f"container-{name[4]}", machine_name="gpubox-1")
        (tmp_path / name).write_text(json.dumps(data))
        named.append(str(tmp_path / name))
    assert cli.main(["compare", *named, "--fail-on-regression"]) == 0
    assert "another machine" not in capsys.readouterr().out


def test_worker_pairs_are_one_machine_whatever_their_torch_builds_report(capsys, tmp_path):
    # A cpu-only torch against a CUDA torch, cpu rows in turns on one machine: their accelerator lists differ.
    from test_interleave import paired_row, planted_pairs

    base, cand = (paired_row(row.processes, interleave_id="run@1") for row in
                  planted_pairs(seed=40, pairs=4, rounds=10, effect=0.0, process_sd=0.01, drift_sd=0.0))
    runs = [results.Run(Path("cpu-torch.json"), {"node": "box", "cpu_name": "x", "accelerators": []}, "d", [base]),
            results.Run(Path("cuda-torch.json"), {"node": "box", "cpu_name": "x",
                                                  "accelerators": [{"name": "NVIDIA H200"}]}, "d", [cand])]
    assert gate.across_machines(compare.change_tables(runs, 0.05)) == []


def test_the_gate_cannot_pass_a_run_compared_with_itself_or_a_copy(tmp_path, capsys):
    # One copy-paste slip in CI (the same file twice) passed every time: "1.00x, p=1".
    first, second = RUNS / "aa_processes_first.json", RUNS / "aa_processes_second.json"
    assert cli.main(["compare", str(first), str(second), "--fail-on-regression"]) == 0
    capsys.readouterr()
    copy = tmp_path / "copy.json"
    shutil.copy(first, copy)
    for candidate in (first, copy):
        assert cli.main(["compare", str(first), str(candidate), "--fail-on-regression"]) == 2
        captured = capsys.readouterr()
        assert f"note: {candidate.name} holds the same measurements as {first.name}" in captured.out
        assert "a later run holds the baseline's own measurements" in captured.err
    assert cli.main(["calibrate", "--from-runs", str(first), str(copy), "--calibration",
                     str(tmp_path / "c.json")]) == 2
    assert "hold the same measurements" in capsys.readouterr().err and not (tmp_path / "c.json").exists()


def test_the_gate_cannot_pass_a_later_run_that_lacks_rows_of_the_baseline(tmp_path, capsys):
    # An interrupted candidate, or one whose row failed, held only the rows that pass.
    baseline = json.loads((RUNS / "aa_processes_first.json").read_text())
    extra_row = json.loads(json.dumps(baseline["benchmarks"][0]))
    extra_row["name"] = "test_mnist_mlp[cpu-seed]"
    extra_row["extra_info"]["pipeline"] = "seed"
    baseline["benchmarks"].append(extra_row)
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps(baseline))
    later = tmp_path / "later.json"
    shutil.copy(RUNS / "aa_processes_second.json", later)
    assert cli.main(["compare", str(path), str(later), "--fail-on-regression"]) == 2
    captured = capsys.readouterr()
    assert "1 row(s) of the baseline not in a later run:\n  mnist_mlp" in captured.out
    assert "not in later.json: no such row: it failed or was skipped there, or was not selected" in captured.out
    assert "1 row(s) of the baseline are not in a later run (above: cut off" in captured.err
    # Gating only the rows both have judges them.
    assert cli.main(["compare", str(path), str(later), "--fail-on-regression", "--pipeline", "resident"]) == 0
    capsys.readouterr()
    # A row of the same name measured as another experiment is named as such, not as cut off.
    other = json.loads(later.read_text())
    other["benchmarks"][0]["extra_info"]["data_source"] = "real"
    later.write_text(json.dumps(other))
    assert cli.main(["compare", str(path), str(later), "--fail-on-regression", "--pipeline", "resident"]) == 2
    assert "their closest row differs in data_source synthetic -> real" in capsys.readouterr().out


def test_history_as_a_gate_fails_on_a_run_file_it_cannot_read(tmp_path, capsys):
    for name in ("cpu_torch_2.14.json", "cpu_torch_2.13.json"):
        shutil.copy(RUNS / name, tmp_path)
    # Other JSON beside the runs (a calibration, notes) and a run of no rows are nothing to judge: skipped.
    (tmp_path / "notes.json").write_text('{"not": "a run"}')
    empty = json.loads((RUNS / "cpu_torch_2.14.json").read_text())
    (tmp_path / "0001_empty.json").write_text(json.dumps({**empty, "benchmarks": []}))
    cli.main(["history", str(tmp_path), "--fail-on-regression"])
    err = capsys.readouterr().err
    [error] = [line for line in err.splitlines() if "error:" in line]  # skipped with a warning, then judged
    assert "a step above is inconclusive" in error and "skipping" in err and "notes.json" in err
    (tmp_path / "cpu_torch_2.15.json").write_text((RUNS / "cpu_torch_2.14.json").read_text()[:400])  # cut off
    assert cli.main(["history", str(tmp_path), "--fail-on-regression"]) == 2
    err = capsys.readouterr().err
    assert "cpu_torch_2.15.json: not readable JSON" in err and "A regression gate judges every run" in err


def test_a_single_process_reading_beyond_the_floor_with_no_significance_does_not_read_as_a_contradiction():
    # "no verdict below 2x (2.28x slower ...)" read as if 2.28x were below 2x.
    beyond = significance.Verdict(2.28, 0.97, 0.05, (1, 1), rounds_p_value=0.97)
    within = significance.Verdict(1.16, 0.0079, 0.05, (1, 1), rounds_p_value=0.0079)
    assert beyond.uncalibrated_single and not beyond.is_change
    assert beyond.describe().startswith("no verdict from one process a side without a calibration: 2.28x slower, "
                                        "beyond 2x, but its rounds do not differ significantly (p=0.97)")
    assert within.describe().startswith("no verdict below 2x from one process a side without a calibration (1.16x "
                                        "slower, rounds p=0.0079)")


def test_the_gate_says_when_two_runs_measured_different_workloads(tmp_path, capsys):
    other = json.loads((RUNS / "aa_second.json").read_text())
    for bench in other["benchmarks"]:
        bench["extra_info"]["workload"] = "char_gpt"
    path = tmp_path / "gpt.json"
    path.write_text(json.dumps(other))
    assert cli.main(["compare", str(RUNS / "aa_first.json"), str(path), "--fail-on-regression"]) == 2
    assert "the runs measured different workloads (mnist_mlp; char_gpt)" in capsys.readouterr().err


def test_history_names_the_files_a_version_with_several_runs_reads(tmp_path, capsys):
    # A quick one-process check made after a long run of the same torch replaced it, without a word.
    for name in ("cpu_torch_2.14.json", "cpu_torch_2.13.json"):
        shutil.copy(RUNS / name, tmp_path)
    later = json.loads((RUNS / "cpu_torch_2.14.json").read_text())
    later["datetime"] = "2099-01-01T00:00:00+00:00"
    (tmp_path / "check.json").write_text(json.dumps(later))
    assert cli.main(["history", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "torch 2.14.1: 2 runs; each row from the latest that has it: check.json, cpu_torch_2.14.json" in out
    assert "torch 2.13.0: " not in out.split("samples/s")[-1]  # one run: nothing to say


def test_an_interrupted_compare_does_not_promise_to_resume(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_compare", interrupted)
    assert cli.main(["compare", str(RUNS / "aa_first.json")]) == 130
    assert capsys.readouterr().err.strip() == "devicebench: interrupted"
