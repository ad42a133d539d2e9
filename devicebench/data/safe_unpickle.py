"""A restricted unpickler for the numpy-array pickles that MNIST and CIFAR-10 are distributed as.

Pickle runs code while loading: ``pickle.load`` on a tampered file can do anything the user can. These files
need only numpy arrays, so only the handful of globals that rebuild an array are allowed; anything else raises.
Files are still checksum-verified before they get here: this is the second line of defence, not the first.
"""

from __future__ import annotations

import importlib
import pickle
from typing import IO, Any

# (module, name) pairs an ndarray pickle refers to. Python-2 era files name ``numpy.core``; numpy 2 moved it
# to ``numpy._core``; Python-3 protocol-2 pickles encode raw bytes through ``_codecs.encode``.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: this file should contain only numpy arrays "
                f"(the file is not the expected data set; delete it and download it again)"
            )
        if module.startswith("numpy.core"):
            try:  # numpy >= 2 keeps these under numpy._core and warns on the old path
                return getattr(importlib.import_module(module.replace("numpy.core", "numpy._core")), name)
            except ImportError:
                pass
        return getattr(importlib.import_module(module), name)


def load_arrays(file: IO[bytes]) -> Any:
    """Unpickle numpy arrays (and plain containers of them) from ``file``, refusing any other global.

    ``encoding="latin1"`` is what Python-2 pickles of numpy arrays need (their raw bytes were ``str``).
    """
    return _ArrayOnlyUnpickler(file, encoding="latin1").load()
