"""Comparison, history, the regression gate and the pytest-benchmark hook, on the frozen runs in fixtures/runs/."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest

from devicebench import cli, compare, history, results
from devicebench.errors import UsageError
from fixtures import compare_hooks

RUNS = Path(__file__).resolve().parents[1] / "fixtures" / "runs"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def load(*names: str) -> list[results.Run]:
    return [results.load_run(RUNS / name) for name in names]


def test_mps_machine_against_cuda_machine_shows_both_devices_and_ratios(capsys):
    assert cli.main(["compare", str(RUNS / "m1_mps.json"), str(RUNS / "gtx1060_cuda.json")]) == 0
    out = capsys.readouterr().out
    assert "Apple M1 GPU · torch 2.6.0 · mps" in out and "NVIDIA GeForce GTX 1060 · torch 2.5.1 · cuda" in out
    tables = compare.build_tables(load("m1_mps.json", "gtx1060_cuda.json"))
    resident = next(t for t in tables if t.workload == "resnet18_cifar")
    verdict = resident.verdicts[resident.columns.index(next(c for c in resident.columns if c.device == "cuda"))]
    assert verdict.is_change and verdict.describe().startswith("1.50x faster")


def test_planted_ten_percent_slowdown_is_flagged_and_the_gate_fails(capsys):
    code = cli.main(["compare", str(RUNS / "cpu_torch_2.13.json"), str(RUNS / "cpu_torch_2.14.json"),
                     "--fail-on-regression"])
    out = capsys.readouterr().out
    assert code == 1
    assert "1.10x slower (p=" in out and "1 significant regression(s) beyond 5%" in out
    assert "torch 2.13.0" in out and "torch 2.14.1" in out


def test_a_slowdown_below_the_threshold_passes_the_gate(capsys):
    code = cli.main(["compare", str(RUNS / "cpu_torch_2.13.json"), str(RUNS / "cpu_torch_2.14.json"),
                     "--fail-on-regression", "--threshold", "15%"])
    assert code == 0 and "below threshold" in capsys.readouterr().out


def test_a_a_pair_is_no_significant_change(capsys):
    code = cli.main(["compare", str(RUNS / "aa_first.json"), str(RUNS / "aa_second.json"), "--fail-on-regression"])
    out = capsys.readouterr().out
    assert code == 0 and "no significant change" in out and "no significant regression" in out
    # Same machine and torch: columns are told apart by file name.
    assert "aa_first" in out and "aa_second" in out


def test_different_workload_versions_are_not_compared(capsys):
    cli.main(["compare", str(RUNS / "old_workload.json"), str(RUNS / "aa_first.json")])
    out = capsys.readouterr().out
    assert "not compared" in out and "version 1, the baseline version 0" in out


def test_markdown_output(capsys):
    cli.main(["compare", str(RUNS / "m1_mps.json"), str(RUNS / "gtx1060_cuda.json"), "--markdown"])
    out = capsys.readouterr().out
    assert "| | Apple M1 GPU · torch 2.6.0 · mps |" in out and "|---|---|" in out


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


def test_run_ids_are_found_under_the_results_folder(tmp_path):
    machine_folder = tmp_path / "Linux-CPython-3.11-64bit"
    machine_folder.mkdir()
    shutil.copy(RUNS / "aa_first.json", machine_folder / "0003_abc_20261121_100000.json")
    assert results.expand(["0003"], tmp_path) == [machine_folder / "0003_abc_20261121_100000.json"]


def test_history_orders_by_torch_version_and_marks_the_regression(tmp_path, capsys):
    for name in ("cpu_torch_2.14.json", "cpu_torch_2.13.json", "m1_mps.json"):
        shutil.copy(RUNS / name, tmp_path)
    png = tmp_path / "history.png"
    assert cli.main(["history", str(tmp_path), "--png", str(png), "--fail-on-regression"]) == 1
    out = capsys.readouterr().out
    assert out.index("torch 2.13.0") < out.index("torch 2.14.1")
    assert "REGRESSION 1.10x slower" in out and "regression: ci-box" in out
    assert "Apple M1 GPU" in out  # a different machine gets its own table, never merged
    assert png.read_bytes().startswith(PNG_SIGNATURE)
    timelines = history.timelines(results.load_runs([str(tmp_path)]))
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


def test_benchmark_compare_hook_leaves_rows_alone_on_a_cpu_only_machine():
    saved = json.loads((RUNS / "m1_mps.json").read_text())
    local = json.loads((RUNS / "aa_first.json").read_text())["machine_info"]
    compare_hooks.report_and_pair(FakeLogger(), local, saved)
    assert saved["benchmarks"][0]["name"] == "test_mnist_mlp[mps-seed]"
