"""One measurement at a time on a machine (machine_lock.py): a second is refused naming the first; the processes
a measurement starts measure under its lock and keep it while they live; a command gives it back when it ends.
Each test has a lock file of its own, and processes that hold it say so before the test goes on (no sleeping)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import pytest

from devicebench import cli, machine_lock
from devicebench.errors import UsageError
from pytest_runs import QUICK_TINY, REPO, TINY_WORKLOAD, run_pytest

pytestmark = pytest.mark.skipif(machine_lock.fcntl is None, reason="no file locks on this OS: nothing kept apart")

# Processes that hold the lock, say so, and wait on their input until the test kills them.
HOLDER = ("import sys; from devicebench import machine_lock; machine_lock.hold('devicebench run --name other');"
          " print('held', flush=True); sys.stdin.read()")
# A coordinator that starts a worker with the locked file, as coordinator.py does, and says the worker's pid.
PARENT = ("import subprocess, sys; from devicebench import machine_lock; machine_lock.hold('devicebench run');"
          " child = subprocess.Popen([sys.executable, '-c', 'import sys; sys.stdin.read()'],"
          " pass_fds=machine_lock.inherited_fds()); print(child.pid, flush=True); sys.stdin.read()")


@pytest.fixture
def own_lock(tmp_path, monkeypatch):
    """The lock as a user's run sees it: a file of the test's own, concurrency not allowed, nothing held."""
    monkeypatch.delenv(machine_lock.ALLOW_VARIABLE, raising=False)
    monkeypatch.delenv(machine_lock.HELD_VARIABLE, raising=False)
    monkeypatch.setenv(machine_lock.PATH_VARIABLE, str(tmp_path / "measuring.lock"))
    monkeypatch.setattr(machine_lock, "_held", None)
    monkeypatch.setattr(machine_lock, "_warned", False)
    yield tmp_path / "measuring.lock"
    machine_lock.release()


def start(code: str) -> tuple[subprocess.Popen, str]:
    """A process running ``code`` under the test's lock settings, and the first line it prints."""
    process = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=dict(os.environ), stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    return process, process.stdout.readline().strip()


def stop(process: subprocess.Popen) -> None:
    process.kill()
    process.wait()


@pytest.fixture
def other_measurement(own_lock):
    holder, said = start(HOLDER)
    assert said == "held"
    yield holder
    stop(holder)


def test_a_second_measurement_is_refused_naming_the_first_and_taken_once_it_has_ended(other_measurement, own_lock):
    with pytest.raises(UsageError, match=r"another measurement is running on this machine \(pid \d+: devicebench "
                                         r"run --name other, since .*\); two at once disturb each other's timings. "
                                         r"Wait for it to end, or set DEVICEBENCH_ALLOW_CONCURRENT=1"):
        machine_lock.hold("devicebench run --name mine")
    stop(other_measurement)
    machine_lock.hold("devicebench run --name mine")  # its lock went with it
    assert f"pid {os.getpid()}: devicebench run --name mine" in own_lock.read_text()
    # A process this one starts with the locked file measures under it (a worker, a rank, a peer's suite side);
    # one started without it is another measurement.
    worker = [sys.executable, "-c", "from devicebench import machine_lock; machine_lock.hold('worker'); print('ok')"]
    child = subprocess.run(worker, cwd=REPO, capture_output=True, text=True, env=dict(os.environ),
                           pass_fds=machine_lock.inherited_fds())
    assert child.stdout.strip() == "ok", child.stderr
    stranger = subprocess.run(worker, cwd=REPO, capture_output=True, text=True, env=dict(os.environ))
    assert "another measurement is running on this machine" in stranger.stderr
    machine_lock.release()
    assert machine_lock.HELD_VARIABLE not in os.environ
    machine_lock.hold("devicebench run --name again")  # given back and taken again


def test_a_worker_left_by_a_killed_coordinator_keeps_the_machine_until_it_ends(own_lock):
    parent, child_pid = start(PARENT)
    os.kill(parent.pid, signal.SIGKILL)  # as kill -9 would: the worker it started goes on
    parent.wait()
    try:
        with pytest.raises(UsageError, match="that process has ended: one it started, or another user's measurement, "
                                             "holds it"):
            machine_lock.hold("devicebench run --name mine")
    finally:
        os.kill(int(child_pid), signal.SIGKILL)
    with open(own_lock) as probe:  # the lock goes with the worker's last descriptor: wait for it, not for a time
        waiter = threading.Thread(target=machine_lock.fcntl.flock, args=(probe, machine_lock.fcntl.LOCK_EX),
                                  daemon=True)
        waiter.start()
        waiter.join(timeout=60)
        assert not waiter.is_alive(), "the worker's lock outlived it"
    machine_lock.hold("devicebench run --name mine")
    assert machine_lock._held is not None


def test_a_stale_variable_from_a_parent_shell_does_not_skip_the_lock(own_lock, monkeypatch):
    monkeypatch.setenv(machine_lock.HELD_VARIABLE, "pid 1 fd 0")  # a descriptor, but not of the lock file
    machine_lock.hold("devicebench run --name mine")
    assert machine_lock._held is not None
    assert os.environ[machine_lock.HELD_VARIABLE] == f"pid {os.getpid()} fd {machine_lock._held.fileno()}"


def test_allowed_concurrency_measures_beside_another_and_still_holds_a_free_lock(other_measurement, own_lock,
                                                                                monkeypatch):
    monkeypatch.setenv(machine_lock.ALLOW_VARIABLE, "1")
    machine_lock.hold("beside")  # not refused
    assert machine_lock._held is None
    stop(other_measurement)
    machine_lock.hold("alone")  # free: held, so that a run started now is refused
    assert machine_lock._held is not None and "alone" in own_lock.read_text()


def test_devicebench_run_is_refused_before_it_starts_a_worker(other_measurement, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["run", "--name", "mine", "--output-dir", "out", "--", "--device", "cpu", "-k", "mnist",
                     "--scale", "quick"]) == 2
    assert "another measurement is running on this machine" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing started, nothing half-written


def test_a_command_gives_the_machine_back_when_it_ends(own_lock, monkeypatch):
    # A notebook calling cli.main goes on after the command: it must not keep every other measurement out.
    monkeypatch.setattr(cli, "cmd_info", lambda args: machine_lock.hold("a command") or 0)
    assert cli.main(["info"]) == 0
    assert machine_lock._held is None


@pytest.mark.parametrize("command", [
    ["peer", "--script", "SCRIPT", "--machine", "m"],
    ["scaling", "--world-sizes", "1", "--launches", "1", "--output-dir", "OUT", "--", "--device", "cpu", "-k",
     "mnist_mlp and resident", "--scale", "quick"],
    ["sweep", "--torch", "2.14.1", "--envs-dir", "OUT", "--", "--device", "cpu", "-k", "mnist", "--scale", "quick"],
])
def test_scaling_peer_and_sweep_take_the_lock_before_they_start_anything(command, other_measurement, tmp_path,
                                                                         capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    script = tmp_path / "benchmark.py"
    script.write_text("print('a peer benchmark')\n")
    argv = [str(script) if part == "SCRIPT" else str(tmp_path / "out") if part == "OUT" else part for part in command]
    assert cli.main(argv) == 2
    assert "another measurement is running on this machine" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_pytest_benchmarks_session_stops_before_its_first_row_naming_the_measurement_running(other_measurement,
                                                                                              own_lock, tmp_path):
    result = run_pytest(*QUICK_TINY, "--benchmark-autosave", "--benchmark-storage", str(tmp_path / "saved"),
                        cwd=tmp_path, env_extra={**TINY_WORKLOAD, machine_lock.ALLOW_VARIABLE: "0"})
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, result.stdout[-2000:]
    assert "another measurement is running on this machine (pid" in result.stdout + result.stderr
    assert not list((tmp_path / "saved").rglob("*.json"))  # no file of rows never measured
    # Refused at collection: no row started, and pytest-benchmark's words on unused fixtures and nothing to save
    # no longer come before the reason.
    assert "Benchmark fixture was not used" not in result.stdout + result.stderr
    assert "Not saving anything" not in result.stdout + result.stderr


@pytest.mark.parametrize("timing_nothing", [["--collect-only"], ["--benchmark-skip"], ["--benchmark-disable"]])
def test_a_pytest_session_that_times_nothing_is_not_refused(timing_nothing, other_measurement, own_lock, tmp_path):
    result = run_pytest(*QUICK_TINY, *timing_nothing, cwd=tmp_path,
                        env_extra={**TINY_WORKLOAD, machine_lock.ALLOW_VARIABLE: "0"})
    assert result.returncode == 0, result.stdout[-2000:]
    assert "another measurement is running" not in result.stdout + result.stderr


def test_a_link_or_fifo_at_the_lock_path_is_never_written_through(own_lock, tmp_path, capsys):
    # The path is in a folder every user can write: another user's link there must not make the next run empty
    # and open up the file it points at.
    victim = tmp_path / "victim"
    victim.write_text("someone's data\n")
    victim.chmod(0o600)
    own_lock.symlink_to(victim)
    machine_lock.hold("devicebench run --name mine")
    assert machine_lock._held is None and victim.read_text() == "someone's data\n"
    assert victim.stat().st_mode & 0o777 == 0o600
    assert "could not use the lock file" in capsys.readouterr().err
    own_lock.unlink()
    os.mkfifo(own_lock)
    machine_lock.hold("devicebench run --name mine")  # neither waits on the FIFO nor fails on it
    assert machine_lock._held is None
