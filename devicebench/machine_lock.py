"""One measurement at a time on a machine: two at once disturb each other's timings, and neither would know.

Every command that times rows (``devicebench run``, ``calibrate``, ``sweep``, ``scaling``, ``peer``, and a
``pytest benchmarks`` session from its first row) holds an exclusive lock on one file of the machine (``lock_path``:
``/tmp/devicebench-measuring.lock`` whatever TMPDIR says, or ``DEVICEBENCH_LOCK``) until it ends. The processes it
starts get the locked file (``inherited_fds``, for ``pass_fds``), so a worker left running by a killed coordinator
still holds it; ``HELD_VARIABLE`` tells them which descriptor it is, and one that has it measures under it. A second
measurement is refused, naming the first and the fix. ``DEVICEBENCH_ALLOW_CONCURRENT=1`` measures beside another
(the project's tests do, with a lock file of their own: they start many small runs at once and judge no timing).
Linux and macOS; Windows has no such lock, and a run there says it measured unguarded.
"""

from __future__ import annotations

import os
import stat
import sys
import tempfile
import time
from pathlib import Path

from devicebench.errors import UsageError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

PATH_VARIABLE = "DEVICEBENCH_LOCK"
ALLOW_VARIABLE = "DEVICEBENCH_ALLOW_CONCURRENT"
HELD_VARIABLE = "DEVICEBENCH_MEASURING"  # "pid N fd K": set by the holder for the processes it starts

_held = None  # the open lock file while this process holds it
_warned = False  # an unguarded measurement says so once, not at every row


def lock_path() -> Path:
    """One file for the whole machine: a per-user or per-job TMPDIR would give each its own lock."""
    if os.environ.get(PATH_VARIABLE):
        return Path(os.environ[PATH_VARIABLE]).absolute()  # the same file for a child in another folder
    base = Path("/tmp") if os.name == "posix" and Path("/tmp").is_dir() else Path(tempfile.gettempdir())
    return base / "devicebench-measuring.lock"


def hold(what: str) -> None:
    """Take this machine's measurement lock until ``release``, saying ``what`` measures; raise UsageError naming
    the holder when another measurement has it. Nothing to do where this process already holds it, or where the
    process that started this one passed it the locked file (``inherited_fds``, ``HELD_VARIABLE``)."""
    global _held
    if _held is not None or _started_under_the_lock():
        return
    if fcntl is None:
        _warn("this OS has no file locks: nothing keeps another measurement from running beside this one")
        return
    path = lock_path()
    handle = _open(path)
    if handle is None:
        _warn(f"could not use the lock file {path} (no such folder, no permission, or not a plain file): nothing "
              f"keeps another measurement from running beside this one (set {PATH_VARIABLE} to a file of your own)")
        return
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = _holder(handle)
        handle.close()
        if os.environ.get(ALLOW_VARIABLE) == "1":
            return
        raise UsageError(f"another measurement is running on this machine ({holder}); two at once disturb each "
                         f"other's timings. Wait for it to end, or set {ALLOW_VARIABLE}=1 to measure anyway (lock "
                         f"file: {path})") from None
    if handle.writable():
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}: {what}, since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        handle.flush()
    os.environ[HELD_VARIABLE] = f"pid {os.getpid()} fd {handle.fileno()}"
    _held = handle


def inherited_fds() -> tuple[int, ...]:
    """The locked file's descriptor for ``subprocess``'s ``pass_fds``: a child keeps the lock held while it lives."""
    if _held is None:
        return ()
    os.set_inheritable(_held.fileno(), True)
    return (_held.fileno(),)


def release() -> None:
    """Give the lock back (the end of a command; the children that got the file keep it until they end)."""
    global _held
    if _held is not None:
        _held.close()
        _held = None
        os.environ.pop(HELD_VARIABLE, None)


def _started_under_the_lock() -> bool:
    """Whether this process got the locked file from the measurement that started it (``HELD_VARIABLE``'s
    descriptor is the lock file; a stale variable from a parent shell names none)."""
    try:
        descriptor = int(os.environ.get(HELD_VARIABLE, "").split(" fd ")[1])
        held, ours = os.fstat(descriptor), os.stat(lock_path())
    except (IndexError, ValueError, OSError):
        return False
    return (held.st_dev, held.st_ino) == (ours.st_dev, ours.st_ino)


def _open(path: Path):
    """The lock file, never through a link or anything but a plain file (it is in a folder every user can write);
    made writable by every user where this call creates it, so each holder can name itself; read-only where
    another user's is not; None where none can be had."""
    safe = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)  # no link followed, no FIFO waited on
    created, mode = False, "r+"
    try:
        try:
            descriptor = os.open(path, os.O_RDWR | safe)
        except FileNotFoundError:
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | safe, 0o666)
            created = True
    except PermissionError:
        try:
            descriptor, mode = os.open(path, os.O_RDONLY | safe), "r"
        except OSError:
            return None
    except OSError:  # a link (ELOOP), a name taken meanwhile, a folder that is not there
        return None
    found = os.fstat(descriptor)
    if not stat.S_ISREG(found.st_mode) or found.st_nlink != 1:
        os.close(descriptor)
        return None
    if created:
        os.fchmod(descriptor, 0o666)  # past the umask
    return os.fdopen(descriptor, mode)


def _holder(handle) -> str:
    """Who holds the lock, as its holder wrote it; where that process has ended, a process it started holds it
    (a worker of a killed coordinator), or a holder that could not write the file (another user's)."""
    handle.seek(0)
    text = handle.read().strip()
    try:
        alive = text.startswith("pid ") and (os.kill(int(text[4:].split(":")[0]), 0) or True)
    except (ValueError, ProcessLookupError):
        alive = False
    except PermissionError:  # another user's live process
        alive = True
    if alive:
        return text
    return f"{text or 'unnamed'}; that process has ended: one it started, or another user's measurement, holds it"


def _warn(message: str) -> None:
    global _warned
    if not _warned:
        _warned = True
        print(f"devicebench: warning: {message}", file=sys.stderr)
