"""Operators that ran on the CPU during an mps row: with ``PYTORCH_ENABLE_MPS_FALLBACK=1`` (which many Mac users
set so that missing operators work) torch runs each operator the MPS backend lacks on the CPU, with only a warning.
A row measured that way is partly a CPU number labelled mps; the row says so (``cpu_fallback_ops``).

torch warns once per process per operator (``TORCH_WARN_ONCE``), so a later row using the same operator would
see no warning: ``torch.set_warn_always(True)`` makes every fallback warn while a row runs. The warning's text is
torch's (aten/src/ATen/mps/MPSFallback.mm): "The operator 'aten::foo' is not currently supported on the MPS
backend and will fall back to run on the CPU. This may have performance implications."
"""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from typing import Iterator

import torch

FALLBACK_WARNING = re.compile(r"The operator '([^']+)' is not currently supported on the MPS backend and will fall "
                              r"back to run on the CPU")
ENVIRONMENT_VARIABLE = "PYTORCH_ENABLE_MPS_FALLBACK"


def fallback_enabled() -> bool:
    """Whether torch would run missing mps operators on the CPU (the variable set to a non-zero number)."""
    value = os.environ.get(ENVIRONMENT_VARIABLE, "").strip()
    return value not in ("", "0")


@contextlib.contextmanager
def watch(device: torch.device) -> Iterator[list[str]]:
    """Yield a list that, after the block, holds the operators that fell back to the CPU (in order, once each).

    Only on mps; elsewhere the list stays empty and nothing is changed. Other warnings raised in the block are
    passed on unchanged when it ends.
    """
    ops: list[str] = []
    if device.type != "mps":
        yield ops
        return
    always = torch.is_warn_always_enabled()
    torch.set_warn_always(True)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield ops
    finally:
        torch.set_warn_always(always)
    for warning in caught:
        match = FALLBACK_WARNING.search(str(warning.message))
        if match:
            if match.group(1) not in ops:
                ops.append(match.group(1))
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)


def summary(ops: list[str]) -> str:
    """``mps, 2 operators on the CPU: aten::a, aten::b`` (what compare and the end of a run print)."""
    return f"mps, {len(ops)} operator{'s' if len(ops) != 1 else ''} on the CPU: {', '.join(ops)}"
