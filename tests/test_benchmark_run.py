"""The timing contract, and the suite in a user's hands on the cpu: saved runs and the gate, interrupts, a usage
error, a comparison with another machine's saved run (the quick run of every row is in test_benchmarks_quick.py)."""

from __future__ import annotations

import json
import shutil
import types
from pathlib import Path

import pytest
import torch

from devicebench import devices, environment, noise, results
from devicebench.measure import measure_row
from devicebench.scales import Scale
from devicebench.workloads.base import RunConfig
from tests.doubles.fakes import RecordingTimer
import tiny_workload
from pytest_runs import QUICK_MNIST, QUICK_TINY, REPO, TINY_WORKLOAD, run_pytest
from test_calibration import frozen_calibration


def tiny_config() -> RunConfig:
    """tests/tiny_workload.py's resident row: rounds of milliseconds, for what the measurement does around any row."""
    return RunConfig(device=torch.device("cpu"), pipeline="resident", data_mode="synthetic",
                     scale=Scale(name="quick", valid_batch_size=256, **tiny_workload.SCALES["quick"]))


def test_sync_happens_inside_every_timed_round(monkeypatch):
    events: list[str] = []
    monkeypatch.setattr(devices, "sync", lambda device: events.append("sync"))
    config = tiny_config()
    extra = measure_row(tiny_workload, config, "test cpu", RecordingTimer(events), count_steps=False)
    # Warm-up rounds run before the timer's clock (their syncs too); every timed round syncs after training and
    # after validation, inside the clock.
    assert events == (["sync", "sync"] * config.scale.warmup_rounds
                      + ["clock start", "sync", "sync", "clock stop"] * config.scale.rounds)
    assert len(extra["processes"][0]["round_seconds"]) == config.scale.rounds  # warm-up rounds are not counted


class SizingGate:
    """A worker's turn pipe whose coordinator asks for 7 timed rounds (interleave.Scheduler._size)."""

    def __init__(self):
        self.turn, self.sizing = 0, []

    def before_round(self) -> int:
        self.turn += 1
        return self.turn

    def first_timed_round(self, minimum_rounds: int, warmup_seconds: float | None,
                          row: dict | None = None) -> tuple[int, int]:
        self.sizing.append((minimum_rounds, warmup_seconds, row))
        return self.before_round(), 7


def test_a_worker_times_as_many_rounds_as_its_coordinator_sized_and_labels_each():
    config = tiny_config()
    gate = SizingGate()
    extra = measure_row(tiny_workload, config, "test cpu", RecordingTimer([]), turns=gate)
    warmups = config.scale.warmup_rounds
    process, = extra["processes"]
    assert len(process["round_seconds"]) == 7 and process["round_sequence"] == list(range(warmups + 1, warmups + 8))
    [(minimum, warmup_seconds, row)] = gate.sizing
    assert minimum == config.scale.rounds and warmup_seconds > 0  # the last warm-up round's length
    # The row it tells the coordinator it is, before timing, is the row it then saves, as a calibration keys it.
    saved = results.Row("test_x", extra)
    assert row["identity"] == json.loads(json.dumps(saved.identity.fields()))
    assert row["machine"] == [*environment.machine_key()[:2], list(environment.machine_key()[2])]
    assert row["torch_version"] == torch.__version__ and row["compiled_code"] == noise.compiled_code(saved)


def test_unknown_device_is_a_usage_error(tmp_path):
    result = run_pytest(str(REPO / "benchmarks"), "--device", "tpu", cwd=tmp_path)
    assert result.returncode == 4  # pytest's usage-error exit code
    assert "valid devices are cpu, mps, cuda" in result.stderr


@pytest.mark.slow
def test_saved_quick_runs_compare_and_a_slowed_run_fails_the_gate(tmp_path):
    """The CI recipe end to end: save runs with --benchmark-autosave, compare them, gate on regressions.

    One process a side and no calibration: the gate claims only a change beyond 2x (significance.py,
    "Single-process runs"). Two real runs of the same code cannot be the A/A check here: with the test command's
    two workers on two cores, another test's process shares the machine, and an A/A of these runs once read 1.99x
    (CI, 2026-12-02). So the A/A is the saved run against itself made 1.9x slower, just inside what is never
    claimed from one process uncalibrated, and the real slowed run sleeps 10 ms in each of the MLP's 4 module
    forwards (~+1.7 s on rounds of ~0.15-0.5 s), over 3x even if the baseline ran at its slowest.
    """
    storage = tmp_path / "results"
    common = [str(REPO / "benchmarks"), "-k", "mnist and not parity", "--pipeline", "resident", "--device",
              "cpu", "--scale", "quick", "--data", "synthetic", f"--benchmark-storage=file://{storage}",
              "--benchmark-autosave", "-q"]
    result = run_pytest(*common, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    [first] = storage.rglob("*.json")
    # The slowed run compared with it by pytest-benchmark's own gate, on a calibration of this machine's noise
    # for the row (planted at 3%): pytest-benchmark fails it, and devicebench's line says it is beyond that noise.
    calibrated = frozen_calibration(tmp_path, first, process_sd=0.03)
    result = run_pytest(*common, "-p", "tests.doubles.slowdown", "--slowdown-ms", "10", "--benchmark-compare=0001",
                        "--benchmark-compare-fail=median:5%", cwd=tmp_path,
                        env_extra={"DEVICEBENCH_CALIBRATION": str(calibrated)})
    assert result.returncode != 0 and "Performance has regressed" in result.stdout + result.stderr
    assert "devicebench: against the compared run" in result.stdout
    assert ("test_mnist_mlp[cpu-resident] against 0001_" in result.stdout
            and "--benchmark-compare-fail failed it; beyond this machine's measured noise for this row" in result.stdout)
    slowed = next(path for path in storage.rglob("*.json") if path != first)
    no_calibration = ["--calibration", str(tmp_path / "no-calibration.json")]
    # 1.9x from one process a side without a calibration: no verdict, and a gate that cannot judge fails (2).
    assert cli_main(["compare", str(first), str(scaled_copy(first, 1.9, tmp_path / "aa.json")),
                     "--fail-on-regression", *no_calibration]) == 2
    assert cli_main(["compare", str(first), str(slowed), "--fail-on-regression", *no_calibration]) == 1


def scaled_copy(run_file: Path, factor: float, target: Path) -> Path:
    """The saved run with every timing multiplied by ``factor``."""
    data = json.loads(run_file.read_text())
    for bench in data["benchmarks"]:
        for process in bench["extra_info"]["processes"]:
            for field in ("round_seconds", "train_seconds", "val_seconds"):
                process[field] = [value * factor for value in process[field]]
    target.write_text(json.dumps(data))
    return target


def cli_main(argv: list[str]) -> int:
    from devicebench import cli

    return cli.main(argv)


# ------------------------------------------------------------------------------ in a user's hands


@pytest.mark.parametrize("signal_name", ["INT", "TERM", "HUP"])  # Ctrl-C; a scheduler or `timeout`; a closed terminal
def test_an_interrupt_keeps_the_finished_rows_and_drops_the_cut_off_one(tmp_path, signal_name):
    # The tests' tiny workload: 1 warm-up + 5 timed rounds a row, seed first: round 9 is the resident row's third.
    out = tmp_path / "out.json"
    result = run_pytest(*QUICK_TINY, "--pipeline", "seed,resident", "-p", "tests.doubles.interrupt",
                        "--interrupt-in-round", "9", "--interrupt-signal", signal_name,
                        "--benchmark-json", str(out), cwd=tmp_path, env_extra=TINY_WORKLOAD)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]  # pytest's "interrupted"
    data = json.loads(out.read_text())
    assert [bench["name"] for bench in data["benchmarks"]] == ["test_workload[tiny_linear-seed-cpu]"]
    assert data["benchmarks"][0]["stats"]["rounds"] == 5
    assert data["devicebench"] == {"schema": 3, "interrupted": True, "rows": 1}
    assert "1 row(s) finished before the interrupt" in result.stdout
    from devicebench import results

    assert results.load_run(out).interrupted


@pytest.mark.parametrize("signal_name", ["INT", "TERM"])
def test_a_second_interrupt_while_the_file_is_written_loses_no_finished_row(tmp_path, signal_name):
    out = tmp_path / "out.json"
    result = run_pytest(*QUICK_TINY, "--pipeline", "seed,resident", "-p", "tests.doubles.interrupt",
                        "--interrupt-in-round", "9", "--interrupt-signal", signal_name,
                        "--interrupt-again-while-saving", "--benchmark-json", str(out), cwd=tmp_path,
                        env_extra=TINY_WORKLOAD)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    data = json.loads(out.read_text())
    assert [bench["name"] for bench in data["benchmarks"]] == ["test_workload[tiny_linear-seed-cpu]"]
    assert "Traceback" not in result.stdout + result.stderr


def test_an_interrupt_in_the_first_row_saves_no_file_of_no_rows(tmp_path):
    storage = tmp_path / "results"
    result = run_pytest(*QUICK_TINY, "--pipeline", "seed,resident", "-p", "tests.doubles.interrupt",
                        "--interrupt-in-round", "3", "--interrupt-signal", "TERM", "--benchmark-autosave",
                        f"--benchmark-storage=file://{storage}", cwd=tmp_path, env_extra=TINY_WORKLOAD)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert not list(storage.rglob("*.json"))  # a 0001_*.json of no rows was left for compare to skip
    assert "devicebench: no row finished: nothing saved" in result.stdout + result.stderr


@pytest.mark.parametrize("saving", ["--benchmark-json", "--benchmark-autosave"])
def test_a_full_disk_leaves_the_old_file_and_no_half_written_one_and_says_so_in_one_line(tmp_path, saving):
    out, storage = tmp_path / "out.json", tmp_path / "results"
    out.write_text('{"earlier": "run"}')
    where = ["--benchmark-json", str(out)] if saving == "--benchmark-json" else \
        ["--benchmark-autosave", f"--benchmark-storage=file://{storage}"]
    result = run_pytest(*QUICK_TINY, "--pipeline", "resident", "-p", "tests.doubles.full_disk", *where,
                        cwd=tmp_path, env_extra=TINY_WORKLOAD)
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    lines = [line for line in result.stdout.splitlines() if "devicebench: error:" in line]
    assert len(lines) == 1 and "no space left on the device" in lines[0] and "Traceback" not in result.stdout
    assert out.read_text() == '{"earlier": "run"}'
    written = [path for path in tmp_path.rglob("*") if path.is_file() and path.suffix in (".json", ".part")]
    assert written == [out], written  # nothing half-written beside it, nothing in the storage


def test_benchmark_disable_runs_one_round(monkeypatch):
    from devicebench.measure import smoke_round

    extra = smoke_round(tiny_workload, tiny_config())
    assert extra["smoke_run"] is True and extra["val_loss"] > 0


class FakeConfig:
    def __init__(self, args=(), paths=(str(REPO / "benchmarks"),), **options):
        self.options = {"numprocesses": None, "dist": "no", "benchmark_disable": False,
                        "benchmark_min_rounds": 5, **options}
        self.invocation_params = types.SimpleNamespace(args=tuple(args))
        self.args = list(paths)  # the paths pytest collects from

    def getoption(self, name, default=None):
        return self.options.get(name, default)


def test_parallel_rows_under_xdist_are_refused_with_the_reason():
    from fixtures import plugin

    with pytest.raises(pytest.UsageError, match="must not run in parallel.*corrupt each other's timings"):
        plugin.refuse_parallel_rows(FakeConfig(numprocesses=2))
    with pytest.raises(pytest.UsageError):
        plugin.refuse_parallel_rows(FakeConfig(dist="load"))
    plugin.refuse_parallel_rows(FakeConfig())  # no xdist: fine
    plugin.refuse_parallel_rows(FakeConfig(numprocesses=2, benchmark_disable=True))  # smoke runs time nothing
    with pytest.raises(pytest.UsageError):  # the repository's root holds benchmarks/
        plugin.refuse_parallel_rows(FakeConfig(numprocesses=2, paths=[str(REPO)]))
    plugin.refuse_parallel_rows(FakeConfig(numprocesses=2, paths=[str(REPO / "tests")]))  # the tests hold no rows


def test_min_rounds_can_only_ask_for_more_rounds_than_the_scale():
    from fixtures import plugin

    from devicebench import rows
    from devicebench.options import RowOptions

    spec = rows.RowSpec("mnist_mlp", "devicebench.workloads.mnist_mlp", "cpu", "seed")
    scale_rounds = rows.run_config(spec, RowOptions()).scale.rounds

    def timed(config: FakeConfig) -> int:
        return rows.run_config(spec, RowOptions(), min_rounds=plugin.min_rounds(config)).scale.rounds

    assert timed(FakeConfig()) == scale_rounds  # pytest-benchmark's default of 5 is not a request
    assert timed(FakeConfig(["--benchmark-min-rounds", "250"], benchmark_min_rounds=250)) == 250
    assert timed(FakeConfig(["--benchmark-min-rounds=1"], benchmark_min_rounds=1)) == scale_rounds


def test_benchmark_compare_with_another_machine_prints_the_differences_not_the_dump(tmp_path):
    storage = tmp_path / "results"
    saved_dir = storage / "Linux-CPython-3.11-64bit"
    saved_dir.mkdir(parents=True)
    shutil.copy(REPO / "tests" / "runs" / "schema1" / "h200-host-cpu-standard.json",
                saved_dir / "0001_h200.json")
    result = run_pytest(*QUICK_MNIST, "--pipeline", "resident", f"--benchmark-storage=file://{storage}",
                        "--benchmark-compare=0001", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    text = result.stdout + result.stderr
    assert "Benchmark machine_info is different" not in text and "'flags'" not in text
    assert "devicebench: differs: torch_version: 2.11.0+cu130 (saved)" in text
    assert "devicebench: differs: accelerators: cuda: NVIDIA H200 (saved)" in text
    # The saved row is the standard scale, this one quick: another experiment, not paired with it.
    assert ("test_mnist_mlp[cpu-resident]: saved row not shown, another experiment: scale standard (saved) vs "
            "quick" in text)
