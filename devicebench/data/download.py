"""Download a file, verify its checksum, and only then put it where later runs will trust it.

The rules every data set follows:
- a download streams into a temporary file beside the target and is moved into place (``os.replace``, atomic on
  one file system) only after its size and checksum match, so an interrupted or corrupt download never sits at
  the cached path;
- a cached file is re-verified before each use, and one that fails is removed (and fetched again);
- network errors are retried a few times with a timeout on every request, then reported with the URL, the path
  to place the file at by hand, and the offline alternative.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from devicebench.errors import DataError

CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class RemoteFile:
    """A file to fetch: where from, what to call it, and the checksum that proves it is the right one.

    ``algorithm`` is a hashlib name (``md5``, ``sha256``) or ``git-blob-sha1``: the id git gives a file's
    content, sha1 of ``b"blob <size>\\0" + content``, which is what a GitHub-hosted file can be checked against.
    """

    url: str
    filename: str
    algorithm: str
    digest: str
    offline_hint: str = ""  # how to run without this file, e.g. "run with --data synthetic"


def file_digest(path: Path, algorithm: str) -> str:
    if algorithm == "git-blob-sha1":
        hasher = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    else:
        hasher = hashlib.new(algorithm)
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(CHUNK_BYTES), b""):
            hasher.update(chunk)
    return hasher.hexdigest()


def is_verified(path: Path, remote: RemoteFile) -> bool:
    return path.is_file() and file_digest(path, remote.algorithm) == remote.digest


def cached_or_none(remote: RemoteFile, directory: Path) -> Path | None:
    """The verified cached copy, or None. A cached copy that fails verification is deleted, with a notice."""
    target = directory / remote.filename
    if not target.exists():
        return None
    if is_verified(target, remote):
        return target
    print(f"devicebench: removing {target}: its {remote.algorithm} does not match the expected {remote.digest} "
          f"(corrupt or replaced file); it will be downloaded again", file=sys.stderr)
    target.unlink()
    return None


def fetch(remote: RemoteFile, directory: Path, *, timeout_s: float = 30.0, attempts: int = 3,
          backoff_s: float = 1.0) -> Path:
    """Return the verified file ``directory/remote.filename``, downloading it if needed.

    Raises DataError (with the URL, the target path and ``remote.offline_hint``) when it cannot be had.
    """
    cached = cached_or_none(remote, directory)
    if cached is not None:
        return cached
    target = directory / remote.filename
    target.parent.mkdir(parents=True, exist_ok=True)  # a filename may name a folder too (tinyshakespeare/input.txt)
    last_error: str = "no attempt made"
    for attempt in range(1, attempts + 1):
        try:
            _download_verified(remote, target, timeout_s)
            return target
        except _Retryable as error:
            last_error = str(error)
            if attempt < attempts:
                time.sleep(backoff_s * attempt)
    raise DataError(
        f"could not download {remote.url} after {attempts} attempts ({last_error}). "
        f"Without network, place the file at {target} ({remote.algorithm} {remote.digest})"
        + (f", or {remote.offline_hint}" if remote.offline_hint else "")
    )


class _Retryable(Exception):
    """A failure that another attempt may fix: network trouble or a transfer cut short."""


def _download_verified(remote: RemoteFile, target: Path, timeout_s: float) -> None:
    # The temporary name is unique, so two runs downloading at once never write into each other's file.
    handle, temp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    temp = Path(temp_name)
    try:
        with os.fdopen(handle, "wb") as out:
            received, expected = _stream(remote.url, out, timeout_s)
        if expected is not None and received != expected:
            raise _Retryable(f"transfer cut short: received {received} of {expected} bytes")
        actual = file_digest(temp, remote.algorithm)
        if actual != remote.digest:
            # Not retried: a server that sends the wrong bytes once will do it again.
            raise DataError(
                f"{remote.url} downloaded ({received} bytes) but its {remote.algorithm} is {actual}, "
                f"expected {remote.digest}: the file is corrupt, truncated or not the expected one, and was "
                f"discarded. Check the URL or proxy, or place a verified copy at {target}"
                + (f", or {remote.offline_hint}" if remote.offline_hint else "")
            )
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)


def _stream(url: str, out, timeout_s: float) -> tuple[int, int | None]:
    """Copy ``url`` into ``out``; return (bytes received, Content-Length or None)."""
    try:
        with requests.get(url, stream=True, timeout=timeout_s) as response:
            if response.status_code >= 500 or response.status_code == 429:
                raise _Retryable(f"HTTP {response.status_code} from server")
            if response.status_code != 200:
                raise DataError(f"could not download {url}: HTTP {response.status_code} {response.reason}")
            length = response.headers.get("Content-Length")
            expected = int(length) if length and length.isdigit() else None
            if response.headers.get("Content-Encoding", "identity") != "identity":
                expected = None  # Content-Length then counts compressed bytes; the checksum still guards
            received = 0
            for chunk in response.iter_content(CHUNK_BYTES):
                out.write(chunk)
                received += len(chunk)
            return received, expected
    except requests.exceptions.RequestException as error:
        raise _Retryable(f"{type(error).__name__}: {error}") from error
