"""The run file (runfile.py): written whole or not at all, each round time once, older schemas migrated when read,
and every file that went through other hands checked before anything is judged from it."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest

from devicebench import cli, coordinator, results, runfile, staging
from devicebench.errors import DevicebenchError
from devicebench.options import RowOptions

RUNS = Path(__file__).parent / "runs"


# ------------------------------------------------------------------------------------------------ writing
def test_a_failed_write_leaves_no_partial_file_and_the_old_one_untouched(tmp_path, monkeypatch):
    target = tmp_path / "run.json"
    runfile.write_json_atomically(target, {"old": True})

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runfile.os, "fsync", full_disk)
    with pytest.raises(runfile.FileError) as error:
        runfile.write_json_atomically(target, {"new": list(range(1000))})
    message = str(error.value)
    assert "\n" not in message and f"could not write {target}: no space left on the device" in message
    assert json.loads(target.read_text()) == {"old": True}
    assert sorted(path.name for path in tmp_path.iterdir()) == ["run.json"]  # no temporary file left


def test_a_write_into_a_folder_without_permission_says_so(tmp_path, monkeypatch):
    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(runfile.os, "replace", denied)
    with pytest.raises(runfile.FileError, match="could not write .*run.json: permission denied"):
        runfile.write_json_atomically(tmp_path / "run.json", {})
    assert list(tmp_path.iterdir()) == []


def test_devicebench_exits_2_with_one_line_when_the_disk_is_full(tmp_path, monkeypatch, capsys):
    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runfile.os, "fsync", full_disk)
    monkeypatch.setattr(cli, "cmd_info", lambda args: runfile.write_json_atomically(tmp_path / "x.json", {}))
    assert cli.main(["info"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no space left on the device" in err


# ------------------------------------------------------------------------------------------------ the format
def worker_file(node: str = "n") -> dict:
    rounds, train = [0.1013, 0.1127, 0.1241], [0.0913, 0.1027, 0.1141]
    extra = {"workload": "w", "workload_version": 1, "pipeline": "resident", "scale": "quick",
             "samples_per_round": 100, "device": "cpu", "device_name": "cpu", "loader_wait_fraction": 0.0,
             "samples_per_s": 1000.0, "processes": [{
                 "round_seconds": rounds, "train_seconds": train, "val_seconds": [0.01] * 3,
                 "samples_per_s": 1000.0, "loader_wait_fraction": 0.0, "round_sequence": [1, 3, 5],
                 "train_loss_per_round": [1.0, 0.9, 0.8]}]}
    return {"machine_info": {"node": node, "torch_version": "2.14.1"}, "datetime": "2026-12-04T10:00:00",
            "rows": [{"name": "test_w[cpu-resident]", "nodeid": "benchmarks/test_w.py::test_w[cpu-resident]",
                      "status": "measured", "extra": extra},
                     {"name": "test_w[mps-resident]", "status": "skipped", "reason": "mps: not here"}]}


def test_a_merged_run_stores_each_round_time_once_and_pytest_benchmarks_summary(tmp_path):
    merged = staging.merge([(1, worker_file()), (2, worker_file())], "A", "python", "run@1")
    text = json.dumps(merged)
    # Once per process: no pooled copy in the row, no raw copy in pytest-benchmark's stats.
    assert text.count("[0.1013, 0.1127, 0.1241]") == 2 and text.count("[0.0913, 0.1027, 0.1141]") == 2
    bench, = merged["benchmarks"]
    assert bench["name"] == "test_w[cpu-resident]" and "data" not in bench["stats"]
    # pytest-benchmark's --benchmark-compare pairs saved rows by their pytest id
    assert bench["fullname"] == "benchmarks/test_w.py::test_w[cpu-resident]"
    assert not {"round_seconds", "train_seconds", "val_seconds"} & set(bench["extra_info"])
    assert bench["stats"]["rounds"] == 6 and bench["stats"]["median"] == pytest.approx(0.1127)
    assert [process["pair"] for process in bench["extra_info"]["processes"]] == [1, 2]
    assert merged["devicebench"]["schema"] == runfile.SCHEMA and "devicebench_schema" not in merged["machine_info"]
    path = runfile.write_json_atomically(tmp_path / "run.json", merged)
    row, = results.load_run(path).rows
    assert row.processes == [[0.0913, 0.1027, 0.1141]] * 2 and row.pairs


def test_a_schema_2_run_is_migrated_when_read(tmp_path):
    data = json.loads((RUNS / "aa_processes_first.json").read_text())
    assert data["machine_info"]["devicebench_schema"] == 2
    before = data["benchmarks"][0]["extra_info"]
    pooled, per_process = before["train_seconds"], [process["train_seconds"] for process in before["processes"]]
    migrated = runfile.migrate(json.loads(json.dumps(data)))
    extra = migrated["benchmarks"][0]["extra_info"]
    assert migrated["devicebench"]["schema"] == 3 and "devicebench_schema" not in migrated["machine_info"]
    assert "train_seconds" not in extra and "round_seconds" not in extra and "schema_version" not in extra
    assert [process["train_seconds"] for process in extra["processes"]] == per_process
    assert sum(map(len, per_process)) == len(pooled)
    assert runfile.row_problem(extra) is None


def test_a_schema_1_run_is_migrated_and_keeps_what_its_rounds_timed():
    data = runfile.migrate(json.loads((RUNS / "schema1" / "h200-cuda-standard.json").read_text()))
    for bench in data["benchmarks"]:
        extra = bench["extra_info"]
        assert extra["timed_with_validation"] is True and runfile.row_problem(extra) is None
        process, = extra["processes"]
        assert process["train_seconds"] == process["round_seconds"]
    run = results.run_of(data, Path("schema1.json"))
    assert run.rows and not any(row.measures_training_alone for row in run.rows)


def test_a_run_of_a_newer_schema_is_refused_by_name():
    data = json.loads((RUNS / "bad" / "newer_schema.json").read_text())
    with pytest.raises(runfile.FileError, match="result schema 99, newer than this devicebench understands"):
        runfile.migrate(data)


# ------------------------------------------------------------------------------------------------ hostile files
def base_run() -> dict:
    return json.loads((RUNS / "aa_first.json").read_text())


def with_times(value) -> dict:
    data = base_run()
    for bench in data["benchmarks"]:
        bench["extra_info"]["round_seconds"] = [value] * 10
    return data


def without(field: str) -> dict:
    data = base_run()
    for bench in data["benchmarks"]:
        bench["extra_info"].pop(field)
    return data


def changed(**fields) -> dict:
    data = base_run()
    for bench in data["benchmarks"]:
        bench["extra_info"].update(fields)
    return data


def marked_interrupted(mark) -> dict:
    data = runfile.migrate(base_run())
    data["devicebench"]["interrupted"] = mark
    return data


# name -> (the file's bytes, or None for a folder where a file was expected; the reason every command gives)
DEV_ZERO, PIPE = object(), object()
CORPUS = {
    "nan": (json.dumps(with_times(float("nan"))), "holds nan, not a finite time above zero"),
    "infinite": (json.dumps(with_times(float("inf"))), "holds inf, not a finite time above zero"),
    "negative": (json.dumps(with_times(-0.5)), "holds -0.5, not a finite time above zero"),
    "zero": (json.dumps(with_times(0)), "holds 0, not a finite time above zero"),
    "missing": (json.dumps(without("pipeline")), "missing pipeline"),
    "wrong-type": (json.dumps(with_times("fast")), "holds 'fast', not a finite time above zero"),
    "fractional-count": (json.dumps(changed(samples_per_round=0.5)), "samples_per_round is 0.5"),
    "list-for-a-name": (json.dumps(changed(pipeline=["seed"])), "pipeline is ['seed'], not a name"),
    "rows-not-entries": (json.dumps({**base_run(), "benchmarks": ["test_x", 3]}), "no devicebench fields"),
    "future": (json.dumps({**base_run(), "devicebench": {"schema": 7}}), "result schema 7, newer than"),
    "empty": (json.dumps({**base_run(), "benchmarks": []}), "holds no rows"),
    "truncated": (json.dumps(base_run())[:300], "not readable JSON"),
    "binary": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", "not readable JSON"),
    "folder": (None, "is a folder, not a run file"),
    "huge-count": (json.dumps(changed(samples_per_round=10 ** 400)), "not a whole number from 1 to 10^15"),
    "huge-time": (json.dumps(with_times(1e308)), "holds 1e+308, not a finite time above zero"),
    "tiny-time": (json.dumps(with_times(1e-320)), "holds 1e-320, not a finite time above zero"),
    "accelerators-not-a-list": (json.dumps({**base_run(), "machine_info": {**base_run()["machine_info"],
                                                                            "accelerators": "x"}}),
                                "machine_info accelerators is 'x', not a list of devices"),
    "interrupted-as-text": (json.dumps(marked_interrupted("false")), "its 'interrupted' mark is not true or false"),
    # Read without a limit, a link to /dev/zero filled the memory and a pipe never ended.
    "link-to-dev-zero": (DEV_ZERO, "not a regular file (a device, pipe or socket)"),
    "pipe": (PIPE, "not a regular file (a device, pipe or socket)"),
}


def hostile(tmp_path: Path, name: str) -> Path:
    content, _ = CORPUS[name]
    path = tmp_path / "runs" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    if content is None:
        path.mkdir()
    elif content is DEV_ZERO:
        path.symlink_to("/dev/zero")
    elif content is PIPE:
        os.mkfifo(path)
    else:
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_a_hostile_file_is_refused_by_the_gate_with_its_reason_and_never_judged(name, tmp_path, capsys):
    bad, reason = hostile(tmp_path, name), CORPUS[name][1]
    base = RUNS / "aa_first.json"
    assert cli.main(["compare", str(base), str(bad), "--fail-on-regression"]) == 2
    captured = capsys.readouterr()
    assert reason in captured.err and str(bad) in captured.err and "Traceback" not in captured.err
    assert "nan" not in captured.out and "ms" not in captured.out  # nothing was judged


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_a_hostile_file_is_skipped_with_its_reason_by_compare_report_and_history(name, tmp_path, capsys):
    bad, reason = hostile(tmp_path, name), CORPUS[name][1]
    base = tmp_path / "runs" / "base.json"
    shutil.copy(RUNS / "aa_first.json", base)
    assert cli.main(["compare", str(base), str(bad)]) == 0
    assert reason in capsys.readouterr().err
    assert cli.main(["report", str(base), str(bad), "-o", str(tmp_path / "report.html")]) == 0
    assert reason in capsys.readouterr().err
    assert cli.main(["history", str(tmp_path / "runs")]) == 0
    err = capsys.readouterr().err
    assert reason in err and bad.name in err
    # Alone, there is nothing readable to compare: a clear error, exit 2.
    assert cli.main(["compare", str(bad)]) == 2
    assert "no readable devicebench runs" in capsys.readouterr().err


def test_the_summary_never_takes_a_hostile_reference(tmp_path):
    from devicebench import summary

    folder = tmp_path / "reference" / "vm"
    folder.mkdir(parents=True)
    (folder / "suite.json").write_text(json.dumps(with_times(float("nan"))))
    assert summary.reference_rows(tmp_path / "reference") == []


def test_a_coordinator_writes_nothing_where_compare_would_read_it_until_the_run_is_whole(tmp_path):
    # Two runs of one name and folder: the second is refused while the first holds the staging folder.
    plan = coordinator.Plan((), RowOptions())
    folder = staging.claim(tmp_path / ".same.processes", plan.describe())
    try:
        with pytest.raises(Exception, match=r"still running \(pid"):
            staging.claim(tmp_path / ".same.processes", plan.describe())
    finally:
        folder.release(remove=False)
    assert not list(tmp_path.glob("*.json"))


@pytest.mark.parametrize("task_class", ["worker.Task", "distributed.Launch"])
def test_a_task_file_of_another_devicebench_is_refused_by_name(tmp_path, task_class):
    from devicebench import distributed, worker

    cls = {"worker.Task": worker.Task, "distributed.Launch": distributed.Launch}[task_class]
    fields = {"rows": [], "options": {}, "output": str(tmp_path / "out.json")}
    if cls is distributed.Launch:
        fields.update(view="weak", folder=str(tmp_path), collective_timeout=20.0)
    path = cls(**fields).write(tmp_path / "task.json")
    assert cls.read(path) == cls(**fields)  # written whole, read back the same
    path.write_text(path.read_text().replace(f'"format": {cls.FORMAT}', '"format": 99'))
    with pytest.raises(SystemExit, match=f"{cls.WHAT} format 99 is not {cls.FORMAT}: the devicebench that wrote it"):
        cls.read(path)


def test_a_read_only_file_system_gets_its_own_message_and_the_fix(tmp_path, monkeypatch):
    # There the temporary file's removal fails too; that second error hid the message behind a traceback.
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(runfile.os, "replace", read_only)
    monkeypatch.setattr(Path, "unlink", read_only)
    with pytest.raises(runfile.FileError, match="could not write .*: read-only file system; nothing was written"):
        runfile.write_atomically(tmp_path / "run.json", "{}")
    monkeypatch.setattr(Path, "mkdir", read_only)
    with pytest.raises(DevicebenchError, match=r"cannot write under .* \(Read-only file system\): give an "
                                               r"--output-dir this user can write to"):
        staging.claim(tmp_path / "out" / ".x.processes", {})


def test_a_chart_or_report_whose_path_is_a_folder_is_refused_by_name_and_leaves_nothing(tmp_path, capsys):
    folder = tmp_path / "chart.png"
    folder.mkdir()
    assert cli.main(["compare", str(RUNS / "aa_first.json"), "--png", str(folder)]) == 2
    assert f"could not write {folder}" in capsys.readouterr().err
    report = tmp_path / "report.html"
    report.mkdir()
    assert cli.main(["report", str(RUNS / "aa_first.json"), "-o", str(report)]) == 2
    assert f"could not write {report}" in capsys.readouterr().err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["chart.png", "report.html"]
