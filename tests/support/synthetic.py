"""Small synthetic IDX datasets for unit tests: real file formats, learnable content, any defect on demand."""

import gzip
import hashlib
from pathlib import Path

import numpy as np

from mnist_core.data.download import DatasetSpec

FILE_NAMES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """IDX encoding of a uint8 array (magic 0x0000080N, N = number of dimensions)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    magic = 0x0800 | array.ndim if magic is None else magic
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


def learnable_split(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Images whose label is drawn as a bright bar in row 2*label, over noise: an MLP learns it quickly."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=count, dtype=np.uint8)
    images = rng.integers(0, 60, size=(count, 28, 28), dtype=np.uint8)
    images[np.arange(count), 2 * labels.astype(int) + 4, 4:24] = 255
    return images, labels


def write_dataset(
    folder: Path, n_train: int = 1200, n_test: int = 300, seed: int = 0, overrides: dict[str, bytes] | None = None
) -> dict[str, str]:
    """Write the four gzip IDX files into `folder`; returns role -> SHA-256 of the decompressed content.

    `overrides` (role -> IDX bytes) replaces the content of those files, defective or not.
    """
    folder.mkdir(parents=True, exist_ok=True)
    train_images, train_labels = learnable_split(n_train, seed)
    test_images, test_labels = learnable_split(n_test, seed + 1)
    contents = {
        "train_images": idx_bytes(train_images),
        "train_labels": idx_bytes(train_labels),
        "test_images": idx_bytes(test_images),
        "test_labels": idx_bytes(test_labels),
        **(overrides or {}),
    }
    for role, content in contents.items():
        (folder / FILE_NAMES[role]).write_bytes(gzip.compress(content, mtime=0))
    return {role: hashlib.sha256(content).hexdigest() for role, content in contents.items()}


def spec_for(name: str, sha256s: dict[str, str], official_mirrors: tuple[str, ...] = ()) -> DatasetSpec:
    return DatasetSpec(
        name=name,
        official_mirrors=official_mirrors,
        files={role: (FILE_NAMES[role], digest) for role, digest in sha256s.items()},
    )


def snapshot(folder: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under `folder` (hidden temp files included)."""
    if not folder.exists():
        return {}
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def assert_no_partial_files(*folders: Path) -> None:
    """No half-written (`.part`) file anywhere under `folders`."""
    for folder in folders:
        leftovers = [p for p in folder.rglob("*") if ".part" in p.name]
        assert not leftovers, f"half-written files left behind: {leftovers}"
