"""MNIST as seed 000 uses it: the ``mnist.pkl.gz`` pickle from Michael Nielsen's book repository.

The file holds ((x_train, y_train), (x_valid, y_valid), (x_test, y_test)): 50k/10k/10k float32 784-vectors in
[0, 1) and int64 labels. The post trains on the first pair and validates on the second.
"""

from __future__ import annotations

import gzip
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from devicebench.data import cached_loader
from devicebench.data.download import RemoteFile, fetch
from devicebench.data.safe_unpickle import load_arrays
from devicebench.errors import DataError

MNIST_FILE = RemoteFile(
    url="https://github.com/mnielsen/neural-networks-and-deep-learning/raw/master/data/mnist.pkl.gz",
    filename="mnist.pkl.gz",
    # The file's git blob id in that repository: GitHub serves exactly the committed bytes.
    algorithm="git-blob-sha1",
    digest="059aba0d982e20e2ac125a3a59d89c3c2cd8b28a",
    offline_hint="run with --data synthetic",
)
TRAIN_SIZE, VALID_SIZE, FEATURES, CLASSES = 50_000, 10_000, 784, 10


@dataclass(frozen=True)
class MnistArrays:
    x_train: torch.Tensor  # float32 [N, 784] in [0, 1)
    y_train: torch.Tensor  # int64 [N]
    x_valid: torch.Tensor
    y_valid: torch.Tensor


def read_mnist_file(path: Path) -> MnistArrays:
    """Read a verified ``mnist.pkl.gz``. Only call this on a file that passed its checksum."""
    try:
        with gzip.open(path, "rb") as file:
            (x_train, y_train), (x_valid, y_valid), _ = load_arrays(file)
    except (OSError, EOFError, ValueError, pickle.UnpicklingError) as error:
        raise DataError(f"{path} is not a readable mnist.pkl.gz ({error}); delete it and run again") from error
    return MnistArrays(*(torch.as_tensor(np.asarray(a)) for a in (x_train, y_train, x_valid, y_valid)))


def write_mnist_file(path: Path, arrays: MnistArrays) -> None:
    """Write arrays in the format of the published file (gzip of a protocol-2 pickle of numpy arrays).

    Used to make small files of the real format for tests; the published file was written by Python 2, whose
    pickles name ``numpy.core.multiarray``, so this does too.
    """
    splits = ((arrays.x_train, arrays.y_train), (arrays.x_valid, arrays.y_valid), (arrays.x_valid, arrays.y_valid))
    payload = pickle.dumps(tuple((x.numpy(), y.numpy()) for x, y in splits), protocol=2)
    payload = payload.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    with gzip.open(path, "wb") as file:
        file.write(payload)


def synthetic_mnist(train_size: int = TRAIN_SIZE, valid_size: int = VALID_SIZE, seed: int = 0) -> MnistArrays:
    """Deterministic stand-in with the real shapes and dtypes.

    Each class is a fixed random pattern plus noise, so the data is learnable: loss falls and accuracy rises as
    with real digits, which keeps ``val_loss`` meaningful as a sanity check (not as an MNIST score).
    """
    generator = torch.Generator().manual_seed(seed)
    prototypes = torch.rand(CLASSES, FEATURES, generator=generator)

    def split(size: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(0, CLASSES, (size,), generator=generator)
        noise = torch.rand(size, FEATURES, generator=generator)
        images = (0.3 * prototypes[labels] + 0.7 * noise).clamp_(0.0, 0.999)
        return images, labels

    return MnistArrays(*split(train_size), *split(valid_size))


_load = cached_loader("MNIST", lambda data_dir, attempts, remote:
                      read_mnist_file(fetch(remote, data_dir, attempts=attempts)), synthetic_mnist)


def load_mnist(mode: str, data_dir: Path, remote: RemoteFile = MNIST_FILE) -> tuple[MnistArrays, str]:
    """MNIST per ``--data`` mode; returns (arrays, "real" | "synthetic")."""
    return _load(mode, data_dir, remote)
