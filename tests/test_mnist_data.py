"""MNIST download, verification and loading, against a local HTTP server with small files in the real format."""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle

import pytest
import torch

from devicebench.data import mnist
from devicebench.data.download import RemoteFile, fetch, file_digest
from devicebench.data.safe_unpickle import load_arrays
from devicebench.errors import DataError


def git_blob_id(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@pytest.fixture
def tiny_mnist_bytes(tmp_path) -> bytes:
    path = tmp_path / "source.pkl.gz"
    mnist.write_mnist_file(path, mnist.synthetic_mnist(train_size=40, valid_size=20, seed=3))
    return path.read_bytes()


def remote_for(url: str, content: bytes) -> RemoteFile:
    return RemoteFile(url=url, filename="mnist.pkl.gz", algorithm="git-blob-sha1", digest=git_blob_id(content),
                      offline_hint="run with --data synthetic")


def leftovers(directory):
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def test_git_blob_id_matches_git(tmp_path):
    # `printf 'hello\n' | git hash-object --stdin` prints this id.
    path = tmp_path / "f"
    path.write_bytes(b"hello\n")
    assert file_digest(path, "git-blob-sha1") == "ce013625030ba8dba906f756967f9e9ca394464a"


def test_good_file_downloads_verifies_and_loads(http_server, tmp_path, tiny_mnist_bytes):
    url = http_server.serve("/mnist.pkl.gz", tiny_mnist_bytes)
    cache = tmp_path / "cache"
    path = fetch(remote_for(url, tiny_mnist_bytes), cache, timeout_s=5)
    assert path == cache / "mnist.pkl.gz" and leftovers(cache) == ["mnist.pkl.gz"]
    arrays = mnist.read_mnist_file(path)
    assert arrays.x_train.shape == (40, 784) and arrays.x_train.dtype == torch.float32
    assert arrays.y_train.dtype == torch.int64 and arrays.x_valid.shape == (20, 784)
    # A second fetch uses the verified cache, without the network.
    fetch(remote_for(url, tiny_mnist_bytes), cache, timeout_s=5)
    assert http_server.routes["/mnist.pkl.gz"].hits == 1


def test_tampered_file_is_refused_and_nothing_is_left(http_server, tmp_path, tiny_mnist_bytes):
    tampered = bytearray(tiny_mnist_bytes)
    tampered[100] ^= 0xFF
    url = http_server.serve("/mnist.pkl.gz", bytes(tampered))
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="git-blob-sha1 is .* expected .*discarded"):
        fetch(remote_for(url, tiny_mnist_bytes), cache, timeout_s=5)
    assert leftovers(cache) == []


def test_truncated_transfer_is_retried_then_refused_leaving_nothing(http_server, tmp_path, tiny_mnist_bytes):
    url = http_server.serve("/mnist.pkl.gz", tiny_mnist_bytes, truncate_to=len(tiny_mnist_bytes) // 2)
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as raised:
        fetch(remote_for(url, tiny_mnist_bytes), cache, timeout_s=5, attempts=2, backoff_s=0)
    message = str(raised.value)
    assert "after 2 attempts" in message and str(cache / "mnist.pkl.gz") in message
    assert http_server.routes["/mnist.pkl.gz"].hits == 2
    assert leftovers(cache) == []


def test_no_network_names_the_url_the_path_and_the_offline_option(closed_port_url, tmp_path, tiny_mnist_bytes):
    url = closed_port_url + "/mnist.pkl.gz"
    with pytest.raises(DataError) as raised:
        fetch(remote_for(url, tiny_mnist_bytes), tmp_path, timeout_s=2, attempts=1)
    message = str(raised.value)
    assert url in message and str(tmp_path / "mnist.pkl.gz") in message and "--data synthetic" in message


def test_http_error_is_reported(http_server, tmp_path, tiny_mnist_bytes):
    url = http_server.serve("/gone.pkl.gz", b"", status=404)
    with pytest.raises(DataError, match="HTTP 404"):
        fetch(remote_for(url, tiny_mnist_bytes), tmp_path, timeout_s=5, attempts=1)


def test_corrupt_cached_file_is_removed_and_fetched_again(http_server, tmp_path, tiny_mnist_bytes, capsys):
    url = http_server.serve("/mnist.pkl.gz", tiny_mnist_bytes)
    (tmp_path / "mnist.pkl.gz").write_bytes(b"half a file")
    path = fetch(remote_for(url, tiny_mnist_bytes), tmp_path, timeout_s=5)
    assert path.read_bytes() == tiny_mnist_bytes
    assert "does not match" in capsys.readouterr().err


def test_load_mnist_real_and_auto_fallback(http_server, closed_port_url, tmp_path, tiny_mnist_bytes, capsys):
    url = http_server.serve("/mnist.pkl.gz", tiny_mnist_bytes)
    arrays, source = mnist.load_mnist("real", tmp_path / "a", remote_for(url, tiny_mnist_bytes))
    assert source == "real" and arrays.x_train.shape == (40, 784)

    offline = remote_for(closed_port_url + "/mnist.pkl.gz", tiny_mnist_bytes)
    arrays, source = mnist.load_mnist("auto", tmp_path / "b", offline)
    assert source == "synthetic" and arrays.x_train.shape == (50_000, 784)
    assert "using synthetic data" in capsys.readouterr().err
    with pytest.raises(DataError, match="--data synthetic"):
        mnist.load_mnist("real", tmp_path / "b", offline)


def test_synthetic_mnist_has_the_real_shapes_and_is_deterministic():
    a, b = mnist.synthetic_mnist(), mnist.synthetic_mnist()
    assert a.x_train.shape == (50_000, 784) and a.x_valid.shape == (10_000, 784)
    assert a.x_train.dtype == torch.float32 and a.y_train.dtype == torch.int64
    assert 0 <= a.x_train.min() and a.x_train.max() < 1 and set(a.y_train.unique().tolist()) == set(range(10))
    assert torch.equal(a.x_train[:100], b.x_train[:100]) and torch.equal(a.y_valid, b.y_valid)


def test_restricted_unpickler_refuses_code():
    class Evil:
        def __reduce__(self):
            import os

            return (os.system, ("echo pwned",))

    with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
        load_arrays(io.BytesIO(pickle.dumps(Evil(), protocol=2)))


def test_published_format_names_numpy_core(tmp_path):
    """The published file is a Python-2 pickle naming numpy.core; the writer keeps that, the reader accepts it."""
    path = tmp_path / "m.pkl.gz"
    mnist.write_mnist_file(path, mnist.synthetic_mnist(train_size=4, valid_size=2))
    with gzip.open(path) as file:
        assert b"numpy.core.multiarray" in file.read()
    assert mnist.read_mnist_file(path).x_train.shape == (4, 784)
