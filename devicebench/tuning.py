"""Options and capability decisions for the ``tuned`` pipeline."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TuningOptions:
    """What the user allows the ``tuned`` pipeline to use; each can be switched off to see what it buys."""

    amp: bool = True
    channels_last: bool = True
    compile: bool = True
    cuda_graphs: bool = True
