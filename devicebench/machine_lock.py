"""One measurement at a time on a machine: two at once disturb each other's timings, and neither would know.

Every command that times rows (``devicebench run``, ``calibrate``, ``sweep``, ``scaling``, ``peer``, and a
``pytest benchmarks`` session from its first row) holds an exclusive lock on one file of the machine (``lock_path``:
in the system's temporary folder, or ``DEVICEBENCH_LOCK``) for the rest of its process; the processes it starts
(workers, ranks, a peer's script) are covered by it through ``HELD_VARIABLE``. A second measurement is refused,
naming the first and the fix. ``DEVICEBENCH_ALLOW_CONCURRENT=1`` measures anyway (the project's tests do: they
start many small runs at once and time nothing they judge).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from devicebench.errors import UsageError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; measurements are not kept apart there
    fcntl = None

PATH_VARIABLE = "DEVICEBENCH_LOCK"
ALLOW_VARIABLE = "DEVICEBENCH_ALLOW_CONCURRENT"
HELD_VARIABLE = "DEVICEBENCH_MEASURING"  # set by the holder for its children: "pid N"

_held = None  # the open lock file, kept for this process's life (closing it, or exiting, releases the lock)


def lock_path() -> Path:
    return Path(os.environ.get(PATH_VARIABLE) or Path(tempfile.gettempdir()) / "devicebench-measuring.lock")


def hold(what: str) -> None:
    """Take this machine's measurement lock for the rest of this process, saying ``what`` measures; raise
    UsageError naming the holder when another measurement has it. Nothing to do when this process or a parent
    holds it, when concurrency is allowed, or where the OS has no locks."""
    global _held
    if _held is not None or os.environ.get(HELD_VARIABLE) or os.environ.get(ALLOW_VARIABLE) == "1" or fcntl is None:
        return
    path = lock_path()
    try:
        handle = open(path, "a+")
    except PermissionError:  # another user's lock file: lockable read-only, the holder not written
        try:
            handle = open(path)
        except OSError:  # a folder this user cannot create the file in: measured unguarded, as before
            return
    except OSError:
        return
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise UsageError(f"another measurement is running on this machine ({holder}); two at once disturb each "
                         f"other's timings. Wait for it to end, or set {ALLOW_VARIABLE}=1 to measure anyway "
                         f"(lock file: {path})") from None
    if handle.writable():
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}: {what}, since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        handle.flush()
    os.environ[HELD_VARIABLE] = f"pid {os.getpid()}"
    _held = handle


def release() -> None:
    """Give the lock back before this process ends (tests; a process that measures once and goes on)."""
    global _held
    if _held is not None:
        _held.close()
        _held = None
        os.environ.pop(HELD_VARIABLE, None)
