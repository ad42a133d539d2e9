"""devicebench run / sweep orchestration, offline: environments that need no download (this Python, and this
Python with a planted slowdown), an interrupted sweep that resumes, a version pip cannot install."""

from __future__ import annotations

import argparse
import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import devicebench
from devicebench import cli, commands, coordinator, history, results, staging, sweep, worker
from devicebench.errors import DevicebenchError, UsageError

ROUND_SECONDS = 0.001  # the scale's 5 rounds: sizing them is tested in test_interleave.py


def plan(*row_arguments: str) -> coordinator.Plan:
    """The rows of a run, as `devicebench run -- ROW_ARGUMENTS` selects them."""
    return commands.plan_of(argparse.Namespace(row_arguments=["--", *row_arguments]))


def tiny_plan() -> coordinator.Plan:
    """Small and quick: one pipeline of the tests' tiny workload (rounds of a few ms; a process is mostly its
    start)."""
    return plan("--workload", "tiny_linear", "--pipeline", "resident", "--device", "cpu", "--scale", "quick",
                "--compile-cache", "shared")


def wrapper(path: Path, variables: str = "", fail_while: Path | None = None, fail_on_call: int | None = None) -> Path:
    """An executable standing in for another environment's Python: this Python, maybe with ``variables`` set (a
    planted slowdown), maybe failing (while a file exists, or on its Nth start only: an interruption in the middle
    of a run)."""
    guard = f'[ -e "{fail_while}" ] && exit 3\n' if fail_while else ""
    if fail_on_call is not None:
        count = path.with_suffix(".calls")
        guard += (f'n=$(( $(cat "{count}" 2>/dev/null || echo 0) + 1 )); echo $n > "{count}"; '
                  f'[ $n -eq {fail_on_call} ] && exit 3\n')
    exports = f"export {variables}\n" if variables else ""
    path.write_text(f'#!/bin/sh\n{guard}{exports}exec "{sys.executable}" "$@"\n')
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def slowed_site(tmp_path: Path) -> Path:
    """A folder whose sitecustomize.py makes every nn.Module forward of the Python that starts with it 5 ms
    slower: another environment's code, planted (the tiny workload's rounds are too short for a fraction)."""
    folder = tmp_path / "slowed-site"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(
        "import time\nimport torch\n"
        "torch.nn.modules.module.register_module_forward_pre_hook(lambda module, args: time.sleep(0.005))\n")
    return folder


@pytest.fixture
def tiny_workload(monkeypatch):
    """Every worker the sweep starts registers tests/tiny_workload.py (they inherit the environment)."""
    monkeypatch.setenv("DEVICEBENCH_WORKLOADS", "tests.tiny_workload")


@pytest.mark.slow
def test_sweep_marks_the_slowed_environment_as_a_step_and_resumes_after_an_interruption(tmp_path, capsys,
                                                                                          tiny_workload):
    out, envs = tmp_path / "sweeps" / "t", tmp_path / "envs"
    environments = [coordinator.Environment("A", sys.executable),
                    coordinator.Environment("again", str(wrapper(tmp_path / "again"))),
                    coordinator.Environment("slowed", str(wrapper(tmp_path / "slowed",
                                                                  f"PYTHONPATH={slowed_site(tmp_path)}",
                                                                  fail_on_call=2)))]
    lines: list[str] = []
    with pytest.raises(DevicebenchError, match=r"slowed: its worker \(pair 2\) exited with 3: (.|\n)*the workers "
                                               r"finished so far are kept"):
        sweep.run_sweep([], 3, tiny_plan(), out, envs, "t", environments=environments, echo=lines.append,
                        round_seconds=ROUND_SECONDS)
    assert not list(out.glob("*.json"))  # nothing half-done where compare or history would read it
    lines.clear()  # the interruption is over: the same command resumes
    runs, skipped = sweep.run_sweep([], 3, tiny_plan(), out, envs, "t", environments=environments,
                                    echo=lines.append, round_seconds=ROUND_SECONDS)
    # Pair 2 resumes, its first environment turned by one (coordinator.Pairs.run_pair).
    assert lines[0] == "pair 1: already measured, kept" and lines[1].startswith("pair 2: again + slowed + A workers")
    assert [path.name for path in runs] == ["t-A.json", "t-again.json", "t-slowed.json"] and not skipped
    merged = json.loads(runs[0].read_text())
    assert merged["devicebench"]["processes"] == 3 and merged["devicebench"]["sweep_position"] == 0
    row = merged["benchmarks"][0]["extra_info"]
    assert len(row["processes"]) == 3 and [len(process["train_seconds"]) for process in row["processes"]] == [5] * 3
    assert [process["pair"] for process in row["processes"]] == [1, 2, 3] and row["interleave_id"]
    # Every timed round is labelled with its turn: three environments, so three turns per round.
    turns = [process["round_sequence"] for process in row["processes"]]
    assert all(len(sequence) == 5 and sequence == sorted(sequence) for sequence in turns)

    timeline, = history.timelines(results.load_runs([str(out)]))
    assert timeline.versions[1:] == [f"{timeline.runs[0][0].torch_version} [again]",
                                     f"{timeline.runs[0][0].torch_version} [slowed]"]
    key, = timeline.keys()
    # The planted slowdown (5 ms before each forward of the one nn.Linear, 17 a round: ~13x slower) is a step
    # at the default 5% threshold. Three pairs, not two: a t-test of two pair estimates has one degree of freedom,
    # and once called a 3.5x slowdown not significant (p=0.10) when the sleeps overshot unevenly on a loaded
    # machine. The same code against itself is not one at 50%: on the shared 2-core VMs this runs on, single A/A
    # processes differed by 1.2x-1.8x (README); the pairs' estimates stay well inside 1.5x, and a test must not
    # fail on the machine's noise.
    _, _, slowed_step = history.steps(timeline, key)
    assert slowed_step.is_regression and slowed_step.process_level and slowed_step.ratio > 2
    _, aa_step, _ = history.steps(timeline, key, threshold=0.50)
    assert aa_step is not None and not aa_step.is_change

    png = tmp_path / "history.png"
    assert cli.main(["history", str(out), "--png", str(png), "--fail-on-regression"]) == 1
    text = capsys.readouterr().out
    assert "regression: " in text and "[slowed]" in text and png.stat().st_size > 5000

    lines.clear()  # a second sweep reuses what is measured
    sweep.run_sweep([], 3, tiny_plan(), out, envs, "t", environments=environments[:1], echo=lines.append)
    assert lines == [f"A: already measured ({out / 't-A.json'}); kept (--rerun measures it again)"]


@pytest.fixture
def enough_disk(monkeypatch):
    """These tests are about pip's answers, not this machine's free space (CI once had 5.4 GiB free)."""
    import collections

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(sweep.shutil, "disk_usage", lambda _: usage(100 * 2**30, 0, 100 * 2**30))


def test_a_version_pip_cannot_install_is_skipped_with_its_reason_and_leaves_nothing(tmp_path, enough_disk):
    empty_index = tmp_path / "index"
    empty_index.mkdir()
    envs = tmp_path / "envs"
    runs, skipped = sweep.run_sweep(["2.14.1", "9.9.9"], 1, plan("--device", "cpu"), tmp_path / "out", envs, "t",
                                    pip_args=["--no-index", "--find-links", str(empty_index)], echo=lambda _: None)
    assert runs == []
    reasons = {skip.version: skip.reason for skip in skipped}
    assert "pip could not install torch 2.14.1 with torchvision 0.29.1 here" in reasons["2.14.1"]
    assert "error" in reasons["2.14.1"].lower()  # pip's own words follow, so the user sees the cause
    assert "no torchvision release is known to pair with torch 9.9.9" in reasons["9.9.9"]
    assert not sweep.environment_path(envs, "2.14.1").exists()  # no half-built environment left to trust


def test_an_incomplete_environment_is_rebuilt_not_trusted(tmp_path, enough_disk):
    envs = tmp_path / "envs"
    half_built = sweep.environment_path(envs, "2.14.1")
    (half_built / "bin").mkdir(parents=True)  # an earlier build stopped before it was marked complete
    messages: list[str] = []
    with pytest.raises(sweep.Skip):
        sweep.ensure_environment(envs, "2.14.1", ["--no-index"], messages.append)
    assert any("is incomplete (an earlier build stopped); rebuilding it" in m for m in messages)


def test_processes_of_different_machines_are_never_merged():
    first = {"machine_info": {"node": "a", "torch_version": "2.14.1"}, "rows": []}
    second = {"machine_info": {"node": "b", "torch_version": "2.14.1"}, "rows": []}
    with pytest.raises(DevicebenchError, match="disagree on node"):
        staging.merge([(1, first), (2, second)], "x", sys.executable, None)


def test_environment_arguments_are_checked(tmp_path):
    with pytest.raises(DevicebenchError, match="is not an executable Python"):
        coordinator.parse_environment(f"A={tmp_path / 'missing'}")
    assert coordinator.parse_environment(f"A={sys.executable}").label == "A"


def test_an_environment_where_every_row_skips_gets_no_run_and_says_why(tmp_path, capsys):
    lines: list[str] = []
    earlier = tmp_path / "none-A.json"
    earlier.write_text("{}")  # an earlier run of that name: left, it would be read as this one's
    written = coordinator.run([coordinator.Environment("A", sys.executable)], 2,
                              plan("-k", "mnist and not tuned", "--device", "mps"), tmp_path, "none", lines.append)
    assert written == [] and not list(tmp_path.glob("*.json"))
    assert any("no row ran in A" in line and "mps" in line for line in lines), lines
    assert not any("process 2/2" in line for line in lines)  # no second process for an environment with no rows
    assert not earlier.exists() and any(f"removed {earlier}: an earlier run's" in line for line in lines)
    # The command says so by its exit status, so that `run && compare` stops.
    assert cli.main(["run", "--processes", "1", "--output-dir", str(tmp_path), "--name", "none", "--", "-k",
                     "mnist and not tuned", "--device", "mps"]) == 2
    assert "no row ran in any environment" in capsys.readouterr().err


def test_the_row_options_after_the_separator_select_rows_as_pytest_would(tmp_path):
    names = [row.name for row in plan("-k", "mnist and (seed or tuned)", "--device", "cpu,cuda").rows]
    assert names == ["test_mnist_mlp[cpu-seed]", "test_mnist_mlp[cpu-tuned]", "test_mnist_mlp[cuda-seed]",
                     "test_mnist_mlp[cuda-tuned]"]
    assert [row.name for row in plan("--workload", "resnet18_cifar", "--pipeline", "resident").rows] == [
        "test_resnet18_cifar[cpu-resident]", "test_resnet18_cifar[mps-resident]",
        "test_resnet18_cifar[cuda-resident]"]
    chosen = plan("--device", "cpu", "--tuned-off", "compile,cuda-graphs", "--data-dir", "data").options
    assert chosen.tuning().compile is False and chosen.tuning().cuda_graphs is False
    assert chosen.tuning().channels_last is True and chosen.data_dir == str(Path("data").resolve())
    for wrong, message in ((["--tuned-off", "graphs"], "--tuned-off graphs: unknown graphs"),
                           (["--device", "tpu"], "tpu"), (["--benchmark-json", "x"], "not a row option"),
                           (["-k", "mnist and"], "ends too early"), (["--workload", "gpt"], "unknown")):
        with pytest.raises(DevicebenchError, match=message):
            plan(*wrong)


def test_a_workload_whose_package_does_not_import_skips_saying_which():
    import types

    from devicebench import rows

    module = types.ModuleType("needs_more")
    module.NAME, module.REQUIRES = "needs_more", ("torch", "no_such_package_here")
    reason = rows.missing_requirement(module)
    assert reason.startswith("needs_more needs torch, no_such_package_here matching this torch: "
                             "no_such_package_here: ModuleNotFoundError")
    module.REQUIRES = ("torch",)
    assert rows.missing_requirement(module) is None


def test_a_sweep_judges_its_history_at_the_sizes_it_ran_to_unless_a_threshold_says_otherwise(tmp_path, monkeypatch):
    measured = tmp_path / "run.json"
    measured.write_text("{}")
    monkeypatch.setattr(commands.sweep, "run_sweep", lambda *args, **kwargs: ([measured], []))
    judged = []
    monkeypatch.setattr(commands, "cmd_history",
                        lambda args: judged.append(commands.threshold_of(args.threshold)) or 0)
    base = ["sweep", "--torch", "2.14.1", "--output-dir", str(tmp_path)]
    assert cli.main([*base, "--until", "5%", "--until", "seed=10%", "--budget", "1m", "--", "--device", "cpu"]) == 0
    assert cli.main([*base, "--until", "5%", "--budget", "1m", "--threshold", "3%", "--", "--device", "cpu"]) == 0
    assert cli.main([*base, "--", "--device", "cpu"]) == 0
    assert [threshold.describe() for threshold in judged] == ["5% (seed 10%)", "3%", "5%"]


def test_a_worker_imports_its_environment_torch_even_where_devicebench_is_installed_beside_another(tmp_path):
    # devicebench installed (not a checkout) sits in its Python's site-packages beside that Python's torch: with the
    # folder on a worker's path, every environment would time the coordinator's torch.
    import torch

    site = tmp_path / "site-packages"
    (site / "torch").mkdir(parents=True)
    (site / "torch" / "__init__.py").write_text("__version__ = 'the coordinator torch'\n")
    (site / "devicebench").symlink_to(Path(devicebench.__file__).resolve().parent)
    folder = worker.import_folder(tmp_path / "import", package=site / "devicebench")
    code = worker.bootstrap("import torch, devicebench.rows; print(torch.__version__, devicebench.rows.__file__)",
                            folder)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [torch.__version__, str(folder / "devicebench" / "rows.py")]


def test_processes_a_worker_spawns_import_the_same_devicebench(tmp_path):
    # A DataLoader's workers started by spawn (macOS; forkserver on Linux from Python 3.14) import by name: loaded
    # by file alone, devicebench was not importable there. -S: no site-packages (where an editable install is).
    code = worker.bootstrap("import multiprocessing, devicebench.runfile\n"
                            "with multiprocessing.get_context('spawn').Pool(1) as pool:\n"
                            "    print(pool.apply(devicebench.runfile._whole, (3,)))",
                            worker.import_folder(tmp_path / "import"))
    result = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, cwd=tmp_path,
                            env={"PATH": "/usr/bin:/bin"}, timeout=120)
    assert result.stdout.strip() == "True", result.stderr[-2000:]


def fake_python(path: Path, torch_version: str | None, missing: list[str], prefix: str | None = None,
                rows_skip: tuple[str, ...] = ()) -> str:
    """An executable that answers worker.probe as a Python with ``torch_version`` lacking ``missing`` would."""
    answer = {"torch": torch_version, "missing": missing, "prefix": prefix or str(path), "rows_skip": list(rows_skip)}
    path.write_text("#!/bin/sh\necho '" + json.dumps(answer) + "'\n")
    path.chmod(0o755)
    return str(path)


def test_an_environment_lacking_the_requirements_is_refused_with_an_install_that_keeps_its_torch(tmp_path):
    lacking = fake_python(tmp_path / "old", "2.13.0+cpu", ["devicebench.measure: ModuleNotFoundError: No module "
                                                           "named 'numpy'"])
    with pytest.raises(UsageError) as refused:
        commands.check_environments([coordinator.Environment("old", lacking),
                                     coordinator.Environment("new", sys.executable)])
    message = str(refused.value)
    assert message.startswith(f"--env old: {lacking} cannot run devicebench's workers: devicebench.measure: ")
    assert f'naming its torch so pip keeps it: {lacking} -m pip install "torch==2.13.0" "torchvision==0.28.0" ' \
           f'"timm>=' in message
    # Without torch there is none to keep: the command says which to name.
    bare = fake_python(tmp_path / "bare", None, ["devicebench.measure: ModuleNotFoundError: No module named 'torch'"])
    with pytest.raises(UsageError, match=r'naming the torch so pip keeps it: .* "torch==VERSION" "torchvision==its '
                                         r'pair \(devicebench/torch_versions.toml\)"'):
        commands.check_environments([coordinator.Environment("bare", bare)])


def test_two_environments_of_one_torch_are_said_to_be_an_a_a_and_rows_that_will_skip_are_named(tmp_path):
    lines: list[str] = []
    first, second = (fake_python(tmp_path / name, "2.14.1+cu130", []) for name in ("a", "b"))
    commands.check_environments([coordinator.Environment("old", first), coordinator.Environment("new", second)],
                                lines.append)
    assert lines[0] == f"environments: old = torch 2.14.1+cu130 ({first}), new = torch 2.14.1+cu130 ({second})"
    assert "note: old and new hold the same torch 2.14.1+cu130, so this is an A/A" in lines[1]
    lines.clear()
    # One environment spelled two ways (one sys.prefix) is an A/A by intent; a broken torchvision skips rows only.
    third = fake_python(tmp_path / "c", "2.14.1+cu130", [], prefix=first,
                        rows_skip=("torchvision: RuntimeError: operator torchvision::nms does not exist",))
    commands.check_environments([coordinator.Environment("A", first), coordinator.Environment("B", third)],
                                lines.append)
    assert len(lines) == 2 and "note: in B the rows of workloads that need torchvision: RuntimeError" in lines[1]


def test_a_built_environment_that_cannot_run_a_worker_is_skipped_and_removed_not_marked_complete(
        tmp_path, monkeypatch, enough_disk):
    monkeypatch.setattr(sweep.venv, "create", lambda path, with_pip: (Path(path) / "bin").mkdir(parents=True))
    monkeypatch.setattr(sweep.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 0, "", ""))
    monkeypatch.setattr(worker, "probe", lambda python: worker.Probe(
        "2.13.0+cpu", ("devicebench.measure: ModuleNotFoundError: No module named 'numpy'",)))
    with pytest.raises(sweep.Skip, match="cannot run devicebench's workers: devicebench.measure: ModuleNotFound"):
        sweep.ensure_environment(tmp_path / "envs", "2.13.0", [], lambda _: None)
    assert not sweep.environment_path(tmp_path / "envs", "2.13.0").exists()
    # A torchvision of another torch only skips the rows that need it (mnist_mlp still runs): kept, and said.
    monkeypatch.setattr(worker, "probe", lambda python: worker.Probe(
        "2.13.0+cpu", (), "/envs/2.13.0", ("torchvision: RuntimeError: operator torchvision::nms does not exist",)))
    lines: list[str] = []
    sweep.ensure_environment(tmp_path / "envs", "2.13.0", [], lines.append)
    assert (sweep.environment_path(tmp_path / "envs", "2.13.0") / sweep.COMPLETE_MARKER).exists()
    assert any("need torchvision: RuntimeError: operator torchvision::nms does not exist will skip" in line
               for line in lines)
