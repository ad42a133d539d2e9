"""CIFAR-10 as seed 004 uses it, read without torchvision's downloader.

torchvision's ``CIFAR10`` md5-checks each batch file against the published ones, so it cannot read a synthetic
archive, and it unpickles with the unrestricted ``pickle``. This module keeps the same on-disk format
(``cifar-10-batches-py/`` with pickled dicts: ``data`` N x 3072 uint8, R then G then B planes; ``labels``) and the
same image pipeline (PIL image -> ``Resize(96)`` -> ``ToTensor``), and adds: md5 check of the archive before
extraction, a tar extraction that refuses anything but plain files inside the target, a manifest of each
extracted file's sha256 that is checked before the file is unpickled, and a restricted unpickler.
"""

from __future__ import annotations

import io
import json
import pickle
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from devicebench.data import cached_loader
from devicebench.data.download import RemoteFile, fetch, file_digest
from devicebench.data.safe_unpickle import load_arrays
from devicebench.errors import DataError

CIFAR_ARCHIVE = RemoteFile(
    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    filename="cifar-10-python.tar.gz",
    algorithm="md5",
    digest="c58f30108f718f92721af3b95e74349a",
    offline_hint="run with --data synthetic",
)
FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
MANIFEST = ".devicebench-manifest.json"
LABEL_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
TRAIN_SIZE, TEST_SIZE, SIDE, CLASSES = 50_000, 10_000, 32, 10


@dataclass(frozen=True)
class CifarArrays:
    train_images: np.ndarray  # uint8 [N, 32, 32, 3], HWC as PIL wants it
    train_labels: np.ndarray  # int64 [N]
    test_images: np.ndarray
    test_labels: np.ndarray


class CifarImages(Dataset):
    """The torchvision-style dataset of the post: each item goes through PIL and the given transform."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform=None):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image = Image.fromarray(self.images[index])
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])


# ---------------------------------------------------------------------------------------------- extraction
def safe_extract(archive: Path, destination: Path) -> Path:
    """Extract the verified ``archive`` into ``destination/cifar-10-batches-py`` and write its manifest.

    Extraction happens in a temporary folder beside the destination; the folder is moved into place only when
    complete, so an interrupted run leaves nothing that a later run would trust. Entries that are absolute,
    climb out with ``..``, or are links or devices are refused before anything is written.
    """
    destination.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r:gz") as tar:
        members = tar.getmembers()
        for member in members:
            _check_member(member, archive)
        staging = Path(tempfile.mkdtemp(dir=destination, prefix=".cifar-extract-"))
        try:
            for member in members:
                target = staging.joinpath(*PurePosixPath(member.name).parts)
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as source, open(target, "wb") as out:
                    shutil.copyfileobj(source, out)
            extracted = staging / FOLDER
            missing = [name for name in TRAIN_FILES + TEST_FILES if not (extracted / name).is_file()]
            if missing:
                raise DataError(f"{archive} has no {FOLDER}/{', '.join(missing)}: not a CIFAR-10 python archive")
            manifest = {path.name: file_digest(path, "sha256") for path in sorted(extracted.iterdir())
                        if path.is_file()}
            (extracted / MANIFEST).write_text(json.dumps(manifest, indent=1))
            final = destination / FOLDER
            if final.exists():  # a folder without a valid manifest from an older or broken run
                shutil.rmtree(final)
            extracted.rename(final)
            return final
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _check_member(member: tarfile.TarInfo, archive: Path) -> None:
    path = PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts:
        raise DataError(f"refusing to extract {archive}: entry {member.name!r} points outside the target folder")
    if not (member.isfile() or member.isdir()):
        raise DataError(f"refusing to extract {archive}: entry {member.name!r} is a link or special file")


def read_verified_folder(folder: Path) -> CifarArrays:
    """Read ``cifar-10-batches-py`` after checking each batch file against the manifest written at extraction."""
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise DataError(f"{folder} has no {MANIFEST} (not extracted by devicebench); delete the folder and run again")
    manifest = json.loads(manifest_path.read_text())

    def read(name: str) -> tuple[np.ndarray, np.ndarray]:
        path = folder / name
        if not path.is_file() or manifest.get(name) != file_digest(path, "sha256"):
            raise DataError(f"{path} is missing or changed since extraction; delete {folder} and run again")
        with open(path, "rb") as file:
            entry = load_arrays(file)
        images = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1)
        return np.ascontiguousarray(images), np.asarray(entry["labels"], dtype=np.int64)

    train = [read(name) for name in TRAIN_FILES]
    test_images, test_labels = read(TEST_FILES[0])
    return CifarArrays(np.concatenate([images for images, _ in train]),
                       np.concatenate([labels for _, labels in train]), test_images, test_labels)


# ----------------------------------------------------------------------------------------------- synthetic
def synthetic_cifar(train_size: int = TRAIN_SIZE, test_size: int = TEST_SIZE, seed: int = 0) -> CifarArrays:
    """Deterministic uint8 images of the real shape: a per-class colour pattern plus noise (learnable)."""
    generator = torch.Generator().manual_seed(seed)
    patterns = torch.randint(40, 216, (CLASSES, SIDE, SIDE, 3), generator=generator, dtype=torch.int16)

    def split(size: int) -> tuple[np.ndarray, np.ndarray]:
        labels = torch.randint(0, CLASSES, (size,), generator=generator)
        noise = torch.randint(-40, 40, (size, SIDE, SIDE, 3), generator=generator, dtype=torch.int16)
        images = (patterns[labels] + noise).clamp_(0, 255).to(torch.uint8)
        return images.numpy(), labels.numpy()

    return CifarArrays(*split(train_size), *split(test_size))


def write_cifar_archive(path: Path, arrays: CifarArrays, files_per_split: int | None = None) -> None:
    """Write ``arrays`` as a ``cifar-10-python.tar.gz`` of the published layout (for tests and offline mirrors)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        def add(name: str, obj) -> None:
            payload = pickle.dumps(obj, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            info = tarfile.TarInfo(f"{FOLDER}/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))

        def planes(images: np.ndarray) -> np.ndarray:  # HWC -> the file's R, G, B planes per row
            return np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), -1))

        train_parts = np.array_split(np.arange(len(arrays.train_images)), len(TRAIN_FILES))
        for name, index in zip(TRAIN_FILES, train_parts):
            add(name, {"batch_label": name, "data": planes(arrays.train_images[index]),
                       "labels": arrays.train_labels[index].tolist(),
                       "filenames": [f"{i}.png" for i in index]})
        add(TEST_FILES[0], {"batch_label": "test", "data": planes(arrays.test_images),
                            "labels": arrays.test_labels.tolist(),
                            "filenames": [f"{i}.png" for i in range(len(arrays.test_images))]})
        add("batches.meta", {"label_names": list(LABEL_NAMES), "num_cases_per_batch": 10000, "num_vis": 3072})
    path.write_bytes(buffer.getvalue())


# ----------------------------------------------------------------------------------------------- loading
def _real_cifar(data_dir: Path, attempts: int, remote: RemoteFile) -> CifarArrays:
    folder = data_dir / FOLDER
    try:
        return read_verified_folder(folder)
    except DataError:
        pass  # not extracted yet, or changed since: verify the archive and extract afresh
    archive = fetch(remote, data_dir, attempts=attempts)
    return read_verified_folder(safe_extract(archive, data_dir))


_load = cached_loader("CIFAR-10", _real_cifar, synthetic_cifar)


def load_cifar(mode: str, data_dir: Path, remote: RemoteFile = CIFAR_ARCHIVE) -> tuple[CifarArrays, str]:
    """CIFAR-10 per ``--data`` mode; returns (arrays, "real" | "synthetic")."""
    return _load(mode, data_dir, remote)
