"""A pytest plugin for testing a full disk: every file devicebench writes whole fails as a full disk would.

    pytest benchmarks -p tests.doubles.full_disk ...

Never loaded unless named with ``-p``.
"""

from __future__ import annotations

import errno

from devicebench import runfile


def pytest_configure(config) -> None:
    def full_disk(descriptor: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    saved = runfile.os.fsync
    runfile.os.fsync = full_disk
    config.add_cleanup(lambda: setattr(runfile.os, "fsync", saved))
