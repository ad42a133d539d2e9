"""One measurement at a time on a machine (machine_lock.py): a second is refused naming the first, its own child
processes are not, and the lock goes with the process that held it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from devicebench import cli, machine_lock
from devicebench.errors import UsageError
from pytest_runs import REPO

HOLDER = ("import time; from devicebench import machine_lock; machine_lock.hold('devicebench run --name other'); "
          "print('held', flush=True); time.sleep(120)")


@pytest.fixture
def own_lock(tmp_path, monkeypatch):
    """This machine's lock as a user's run sees it: a lock file of the test's own, concurrency not allowed."""
    monkeypatch.delenv(machine_lock.ALLOW_VARIABLE, raising=False)
    monkeypatch.delenv(machine_lock.HELD_VARIABLE, raising=False)
    monkeypatch.setenv(machine_lock.PATH_VARIABLE, str(tmp_path / "measuring.lock"))
    monkeypatch.setattr(machine_lock, "_held", None)
    yield tmp_path / "measuring.lock"
    machine_lock.release()


@pytest.fixture
def other_measurement(own_lock):
    """Another process holding the lock (it says so once it has it: no sleeping to wait for it)."""
    env = {key: value for key, value in os.environ.items() if key != machine_lock.ALLOW_VARIABLE}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.skipif(machine_lock.fcntl is None, reason="no advisory locks on this OS: nothing is kept apart")
def test_a_second_measurement_is_refused_naming_the_first_and_taken_once_it_has_ended(other_measurement, own_lock):
    with pytest.raises(UsageError, match=r"another measurement is running on this machine \(pid \d+: devicebench "
                                         r"run --name other, since .*\); two at once disturb each other's timings. "
                                         r"Wait for it to end, or set DEVICEBENCH_ALLOW_CONCURRENT=1"):
        machine_lock.hold("devicebench run --name mine")
    other_measurement.kill()
    other_measurement.wait()
    machine_lock.hold("devicebench run --name mine")  # its lock went with it
    assert f"pid {os.getpid()}: devicebench run --name mine" in own_lock.read_text()
    # The workers this process starts are covered by its lock.
    child = subprocess.run([sys.executable, "-c", "from devicebench import machine_lock; "
                            "machine_lock.hold('worker'); print('measuring')"], cwd=REPO, capture_output=True,
                           text=True, env={k: v for k, v in os.environ.items() if k != machine_lock.ALLOW_VARIABLE})
    assert child.stdout.strip() == "measuring", child.stderr


@pytest.mark.skipif(machine_lock.fcntl is None, reason="no advisory locks on this OS: nothing is kept apart")
def test_devicebench_run_is_refused_before_it_starts_a_worker(other_measurement, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["run", "--name", "mine", "--output-dir", "out", "--", "--device", "cpu", "-k", "mnist",
                     "--scale", "quick"]) == 2
    assert "another measurement is running on this machine" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing started, nothing half-written


def test_allowed_concurrency_takes_no_lock(own_lock, monkeypatch):
    monkeypatch.setenv(machine_lock.ALLOW_VARIABLE, "1")
    machine_lock.hold("tests")
    assert machine_lock._held is None and not own_lock.exists()


def test_a_lock_file_that_cannot_be_made_leaves_the_measurement_unguarded(own_lock, monkeypatch, tmp_path):
    monkeypatch.setenv(machine_lock.PATH_VARIABLE, str(tmp_path / "no-such-folder" / "measuring.lock"))
    machine_lock.hold("devicebench run --name mine")
    assert machine_lock._held is None
