"""Reading and validating IDX files (the MNIST container format), gzip-compressed or not."""

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

from mnist_core.errors import DataError

IMAGE_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
LABEL_MAGIC = 0x00000801  # unsigned byte, 1 dimension
IMAGE_SIDE = 28
NUM_CLASSES = 10
CLASS_NAMES: dict[str, list[str]] = {
    "mnist": [str(digit) for digit in range(NUM_CLASSES)],
    "fashion-mnist": [
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ],
}
# The answer for an input that is none of the classes: a reserved class after the dataset's own (the model still
# has NUM_CLASSES outputs; evaluation/novelty.py decides from them).
REFUSED_CLASS = NUM_CLASSES
REFUSED_NAMES = {"mnist": "not a digit", "fashion-mnist": "not a clothing item"}


def refused_name(dataset: str) -> str:
    return REFUSED_NAMES.get(dataset, "not in the classes")


def read_bytes(path: Path, limit: int | None = None) -> bytes:
    """The decompressed content of `path` (gzip detected by its magic bytes); DataError past `limit` bytes, so a
    small gzip bomb cannot fill the memory."""
    try:
        raw = Path(path).read_bytes()
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror or error})") from error
    if raw[:2] != b"\x1f\x8b":
        if str(path).endswith(".gz"):
            raise DataError(f"{path}: not a gzip file (starts with {raw[:16]!r}); an error page from a mirror?")
        return raw
    try:
        if limit is None:
            return gzip.decompress(raw)
        stream = zlib.decompressobj(16 + zlib.MAX_WBITS)  # gzip.decompress has no bound
        content = stream.decompress(raw, limit + 1)
        if len(content) > limit:
            raise DataError(f"{path}: decompresses to more than {limit} bytes; refused")
        if not stream.eof:
            raise EOFError("the gzip stream ends early")
        return content
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"{path}: corrupt or truncated gzip data ({error})") from error


def parse_idx(content: bytes, name: str, expected_magic: int) -> np.ndarray:
    """Parse IDX bytes into a uint8 array, checking magic number and size against the header."""
    if len(content) < 4:
        raise DataError(f"{name}: {len(content)} bytes is too short for an IDX header")
    magic = int.from_bytes(content[:4], "big")
    if magic != expected_magic:
        raise DataError(f"{name}: IDX magic number is 0x{magic:08x}, expected 0x{expected_magic:08x}")
    ndim = magic & 0xFF
    header_size = 4 + 4 * ndim
    if len(content) < header_size:
        raise DataError(f"{name}: truncated IDX header ({len(content)} bytes, need {header_size})")
    shape = tuple(int.from_bytes(content[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    # Python ints: np.prod in int64 silently wraps for absurd declared shapes and could pass the size check.
    expected_bytes = header_size + math.prod(shape)
    if len(content) != expected_bytes:
        raise DataError(
            f"{name}: header declares shape {shape} ({expected_bytes} bytes) but the file has {len(content)} bytes"
        )
    return np.frombuffer(content, dtype=np.uint8, offset=header_size).reshape(shape)


def read_images(path: Path) -> np.ndarray:
    images = parse_idx(read_bytes(path), Path(path).name, IMAGE_MAGIC)
    if images.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise DataError(
            f"{Path(path).name}: images are {images.shape[1]}x{images.shape[2]}, expected {IMAGE_SIDE}x{IMAGE_SIDE}"
        )
    return images


def read_labels(path: Path) -> np.ndarray:
    labels = parse_idx(read_bytes(path), Path(path).name, LABEL_MAGIC)
    if labels.size and int(labels.max()) >= NUM_CLASSES:
        bad = int(np.argmax(labels >= NUM_CLASSES))
        raise DataError(f"{Path(path).name}: label {int(labels[bad])} at index {bad} is outside 0-{NUM_CLASSES - 1}")
    return labels


def read_split(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of one split, checked to pair up."""
    images, labels = read_images(images_path), read_labels(labels_path)
    if len(images) != len(labels):
        raise DataError(
            f"{Path(images_path).name} has {len(images)} images but {Path(labels_path).name} has {len(labels)} labels"
        )
    if len(images) == 0:
        raise DataError(f"{Path(images_path).name}: no images")
    return images, labels
