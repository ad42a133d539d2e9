"""Where torch.compile and Triton keep compiled code for one process: fresh, the user's, or an environment's kept.

- fresh (the default of a plain run): an empty folder, so kernels that inductor and cuDNN pick by timing are
  picked anew in every process, and the processes of a run are independent samples of those choices.
- shared: the user's own caches (a faster start, at the price of that independence).
- kept (workers of ``devicebench run`` on the cpu alone, or asked for): the compiled code of the environment's
  earlier workers, with inductor's autotuning cache off, so launch configurations are still picked by timing.
  On the cpu a compile gives byte-identical machine code in every process, so recompiling buys no information
  (docs/comparing.md).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Callable

MODES = ("fresh", "shared", "kept")
VARIABLES = ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")
COMPILED_MARK = ".compiled"  # written into an environment's kept folder once its code is compiled


def use(mode: str, folder: str | None = None) -> Callable[[], None]:
    """Point this process's compile caches as ``mode`` says (``folder``: kept's); returns the undo."""
    if mode == "shared":
        return lambda: None
    if mode == "fresh":
        folder = tempfile.mkdtemp(prefix="devicebench-compile-cache-")
        undo = _point_at(folder)

        def remove() -> None:
            undo()
            shutil.rmtree(folder, ignore_errors=True)

        return remove
    if mode != "kept" or not folder:
        raise ValueError(f"compile cache {mode!r} (folder {folder!r}): kept needs a folder; modes: {MODES}")
    undo = _point_at(folder)
    from torch._inductor import config as inductor_config

    saved = inductor_config.autotune_local_cache
    inductor_config.autotune_local_cache = False

    def restore() -> None:
        undo()
        inductor_config.autotune_local_cache = saved

    return restore


def _point_at(folder: str) -> Callable[[], None]:
    """torch.compile's and Triton's on-disk caches in ``folder``; both read these variables when first used."""
    saved = {name: os.environ.get(name) for name in VARIABLES}
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(folder, "inductor")
    os.environ["TRITON_CACHE_DIR"] = os.path.join(folder, "triton")

    def restore() -> None:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

    return restore
