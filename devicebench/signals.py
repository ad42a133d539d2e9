"""SIGTERM (a job scheduler, ``timeout``, ``docker stop``) and SIGHUP (a closed terminal) end a Python process at
once by default: no ``finally``, no pytest session finish, so every finished row (or worker pair) would be lost.
Turned into the KeyboardInterrupt that Ctrl-C raises, they take its path: what finished is kept, what was cut off
is not."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Callable


def stop_like_ctrl_c() -> Callable[[], None]:
    """Route SIGTERM and SIGHUP to KeyboardInterrupt where their handler is still the default; returns the undo.

    A handler someone else installed is left alone; outside the main thread nothing can be installed."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def interrupt(number, frame):
        raise KeyboardInterrupt(f"{signal.Signals(number).name} received")

    installed = []
    for name in ("SIGTERM", "SIGHUP"):
        number = getattr(signal, name, None)
        if number is not None and signal.getsignal(number) is signal.SIG_DFL:
            signal.signal(number, interrupt)
            installed.append(number)

    def undo() -> None:
        for number in installed:
            signal.signal(number, signal.SIG_DFL)

    return undo


@contextlib.contextmanager
def ignored_while_saving():
    """Ctrl-C, SIGTERM and SIGHUP ignored while finished work is written (a second Ctrl-C pressed then lost every
    finished row); what they asked for, the end, follows the write."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {number: signal.signal(number, signal.SIG_IGN)
             for number in (getattr(signal, name, None) for name in ("SIGINT", "SIGTERM", "SIGHUP")) if number}
    try:
        yield
    finally:
        for number, handler in saved.items():
            if handler is not None:
                signal.signal(number, handler)
