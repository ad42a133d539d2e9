"""Tiny Shakespeare as nanoGPT's ``shakespeare_char`` uses it: char-rnn's ``input.txt``, one token per character.

The vocabulary is the sorted set of the text's characters (65), the first 90% of the tokens train and the last 10%
validate, as nanoGPT's ``data/shakespeare_char/prepare.py`` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from devicebench.data import cached_loader
from devicebench.data.download import RemoteFile, fetch
from devicebench.errors import DataError

SHAKESPEARE_FILE = RemoteFile(
    url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
    filename="tinyshakespeare/input.txt",  # its place in char-rnn, so a copy of that folder serves as --data-dir
    algorithm="sha256",
    digest="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
    offline_hint="run with --data synthetic",
)
TEXT_BYTES = 1_115_394
VOCAB_SIZE = 65
TRAIN_FRACTION = 0.9


@dataclass(frozen=True)
class TokenSplits:
    train: torch.Tensor  # int64 token ids, one per character
    valid: torch.Tensor
    vocab_size: int


def encode_text(text: str) -> TokenSplits:
    """Characters to ids over the text's own sorted vocabulary, split 90/10."""
    vocabulary = sorted(set(text))
    index = {char: position for position, char in enumerate(vocabulary)}
    tokens = torch.tensor([index[char] for char in text], dtype=torch.int64)
    cut = int(len(tokens) * TRAIN_FRACTION)
    return TokenSplits(tokens[:cut], tokens[cut:], len(vocabulary))


def read_text_file(path: Path) -> TokenSplits:
    """Read a verified ``input.txt``."""
    try:
        return encode_text(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path} is not a readable text file ({error}); delete it and run again") from error


def synthetic_tokens(length: int = TEXT_BYTES, vocab_size: int = VOCAB_SIZE, seed: int = 0) -> TokenSplits:
    """Deterministic stand-in of the real length and vocabulary: a random walk over the vocabulary (each token
    a small step from the last), so the next token is predictable and the loss falls as it does on text."""
    generator = torch.Generator().manual_seed(seed)
    steps = torch.randint(-2, 3, (length,), generator=generator)
    tokens = torch.remainder(torch.cumsum(steps, 0), vocab_size)
    cut = int(length * TRAIN_FRACTION)
    return TokenSplits(tokens[:cut], tokens[cut:], vocab_size)


_load = cached_loader("Tiny Shakespeare", lambda data_dir, attempts, remote:
                      read_text_file(fetch(remote, data_dir, attempts=attempts)), synthetic_tokens)


def load_shakespeare(mode: str, data_dir: Path, remote: RemoteFile = SHAKESPEARE_FILE) -> tuple[TokenSplits, str]:
    """Tiny Shakespeare per ``--data`` mode; returns (splits, "real" | "synthetic")."""
    return _load(mode, data_dir, remote)
