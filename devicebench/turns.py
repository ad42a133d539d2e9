"""A worker's end of its turn pipe: it runs only while it holds the turn (interleave.py says why and how).

At each row's start and before each of its rounds the worker writes where it stands as one JSON line and blocks
until the coordinator answers with the turn's sequence number; at its first timed round the answer also says how
many rounds to time.
"""

from __future__ import annotations

import json
import os

from devicebench.errors import DevicebenchError


class TurnPipe:
    def __init__(self, read_fd: int, write_fd: int):
        self._turns = os.fdopen(read_fd, "r", buffering=1)
        self._requests = os.fdopen(write_fd, "w", buffering=1)
        self._item, self._test, self._step = -1, "", 0

    def begin_row(self, item: int, test: str, together: bool = False) -> int:
        """Block until this worker may build its ``item``-th row (named ``test``); the turn's sequence number.
        ``together``: it may build it while the other workers build theirs (interleave.py)."""
        self._item, self._test, self._step = item, test, 0
        return int(self._wait({"together": True} if together else None)["sequence"])

    def before_round(self) -> int:
        """Block until this worker's turn for its next round; the turn's sequence number (its label)."""
        self._step += 1
        return int(self._wait()["sequence"])

    def first_timed_round(self, minimum_rounds: int, warmup_seconds: float | None,
                          row: dict | None = None) -> tuple[int, int]:
        """Block until this worker's turn for its first timed round, saying how long its last warm-up round took
        and which row it is (``row``: measure.calibration_key); the turn's sequence number and how many rounds
        to time (the same for every worker of the pair: interleave.Scheduler._size)."""
        self._step += 1
        answer = self._wait({"minimum_rounds": minimum_rounds, "warmup_seconds": warmup_seconds, "row": row})
        return int(answer["sequence"]), int(answer.get("rounds", minimum_rounds))

    def _wait(self, sizing: dict | None = None) -> dict:
        message = {"item": self._item, "test": self._test, "step": self._step, **(sizing or {})}
        self._requests.write(json.dumps(message) + "\n")
        self._requests.flush()
        answer = self._turns.readline()
        if not answer:  # the coordinator is gone (interrupted): nothing is left to take turns with
            raise DevicebenchError("the `devicebench run` that started this worker stopped; this worker stops too")
        return json.loads(answer)
