"""CIFAR-10: a tiny archive in the real format, downloaded from 127.0.0.1, verified, safely extracted, loaded."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest

from devicebench.data import cifar10
from devicebench.errors import DataError
from tests.doubles.datafiles import cifar_remote as remote_for
from tests.doubles.datafiles import populate_cifar as populate
from tests.doubles.datafiles import tiny_cifar_archive

TINY = cifar10.synthetic_cifar(train_size=20, test_size=10, seed=5)


@pytest.fixture
def tiny_archive(tmp_path) -> bytes:
    return tiny_cifar_archive(tmp_path / "tiny.tar.gz", train_size=20, test_size=10, seed=5)


def evil_archive(name: str, kind=tarfile.REGTYPE) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo(name)
        info.type = kind
        payload = b"owned"
        if kind == tarfile.SYMTYPE:
            info.linkname = "/etc/passwd"
            tar.addfile(info)
        else:
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


def test_archive_downloads_extracts_and_loads(http_server, tmp_path, tiny_archive):
    arrays, source = populate(http_server, tmp_path / "data", tiny_archive)
    assert source == "real"
    assert arrays.train_images.shape == (20, 32, 32, 3) and arrays.train_images.dtype == np.uint8
    assert np.array_equal(arrays.train_images, TINY.train_images)  # the R/G/B plane layout round-trips
    assert np.array_equal(arrays.test_labels, TINY.test_labels)
    folder = tmp_path / "data" / cifar10.FOLDER
    assert (folder / cifar10.MANIFEST).is_file()
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no staging or partial files


def test_tampered_archive_is_refused_and_nothing_is_left(http_server, tmp_path, tiny_archive):
    url = http_server.serve("/c.tar.gz", tiny_archive[:-10] + b"0123456789")
    data_dir = tmp_path / "data"
    with pytest.raises(DataError, match="md5"):
        cifar10.load_cifar("real", data_dir, remote_for(url, tiny_archive))
    assert list(data_dir.iterdir()) == []


@pytest.mark.parametrize("entry", ["../escaped", "cifar-10-batches-py/../../escaped", "/tmp/absolute"])
def test_archive_entries_outside_the_target_are_refused(http_server, tmp_path, entry):
    content = evil_archive(entry)
    url = http_server.serve("/evil.tar.gz", content)
    data_dir = tmp_path / "data"
    with pytest.raises(DataError, match="points outside the target"):
        cifar10.load_cifar("real", data_dir, remote_for(url, content))
    assert not (tmp_path / "escaped").exists()
    assert not (data_dir / cifar10.FOLDER).exists()
    assert [p.name for p in data_dir.iterdir()] == ["cifar-10-python.tar.gz"]  # verified, but not extracted


def test_links_in_the_archive_are_refused(http_server, tmp_path):
    content = evil_archive("cifar-10-batches-py/data_batch_1", tarfile.SYMTYPE)
    url = http_server.serve("/link.tar.gz", content)
    with pytest.raises(DataError, match="link or special file"):
        cifar10.load_cifar("real", tmp_path, remote_for(url, content))
    assert not (tmp_path / cifar10.FOLDER).exists()


def test_batch_file_changed_after_extraction_is_not_unpickled(http_server, tmp_path, tiny_archive):
    populate(http_server, tmp_path, tiny_archive)
    batch = tmp_path / cifar10.FOLDER / "data_batch_1"
    batch.write_bytes(batch.read_bytes() + b"tampered")
    with pytest.raises(DataError, match="changed since extraction"):
        cifar10.read_verified_folder(tmp_path / cifar10.FOLDER)


def test_synthetic_cifar_has_the_real_shapes():
    arrays = cifar10.synthetic_cifar()
    assert arrays.train_images.shape == (50_000, 32, 32, 3) and arrays.test_images.shape == (10_000, 32, 32, 3)
    assert arrays.train_images.dtype == np.uint8 and arrays.train_labels.dtype == np.int64
    assert np.array_equal(arrays.test_labels, cifar10.synthetic_cifar().test_labels)
