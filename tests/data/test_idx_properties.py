"""Property tests of the IDX reader: any input gives arrays of the declared shape or a DataError, nothing else."""

import gzip
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mnist_core.data.idx import IMAGE_MAGIC, IMAGE_SIDE, LABEL_MAGIC, NUM_CLASSES, parse_idx, read_images, read_labels
from mnist_core.errors import DataError
from tests.support.synthetic import idx_bytes

PROFILE = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _declared_shape(content: bytes) -> tuple[int, ...]:
    ndim = content[3]
    return tuple(int.from_bytes(content[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))


def _check_parse(content: bytes, magic: int) -> None:
    try:
        array = parse_idx(content, "sample", magic)
    except DataError as error:
        assert "sample" in str(error)  # the message names the file
        return
    assert array.dtype == np.uint8
    assert array.shape == _declared_shape(content)
    assert array.tobytes() == content[4 + 4 * (magic & 0xFF) :]


@PROFILE
@given(st.binary(max_size=64), st.sampled_from([IMAGE_MAGIC, LABEL_MAGIC]))
@example(b"", IMAGE_MAGIC)
@example(b"\x00\x00\x08\x01", LABEL_MAGIC)  # a header that ends after the magic number
@example(b"\x00\x00\x08\x03" + b"\xff" * 12, IMAGE_MAGIC)  # 4G x 4G x 4G: must not wrap around in int64
# 2**22 * 2**21 * 2**21 = 2**64, which int64 arithmetic wraps to 0 bytes: exactly what this header-only file holds.
@example(b"\x00\x00\x08\x03" + (2**22).to_bytes(4, "big") + (2**21).to_bytes(4, "big") * 2, IMAGE_MAGIC)
def test_random_bytes(content: bytes, magic: int) -> None:
    _check_parse(content, magic)


@st.composite
def valid_idx(draw: st.DrawFn) -> tuple[bytes, int]:
    if draw(st.booleans()):
        count = draw(st.integers(0, 4))
        array = np.frombuffer(draw(st.binary(min_size=count * 784, max_size=count * 784)), dtype=np.uint8)
        return idx_bytes(array.reshape(count, IMAGE_SIDE, IMAGE_SIDE)), IMAGE_MAGIC
    labels = draw(st.lists(st.integers(0, 255), max_size=50))
    return idx_bytes(np.array(labels, dtype=np.uint8)), LABEL_MAGIC


@st.composite
def mutated_idx(draw: st.DrawFn) -> tuple[bytes, int]:
    """A valid file with a few bytes overwritten, cut off, or appended, favouring the header."""
    content, magic = draw(valid_idx())
    data = bytearray(content)
    for _ in range(draw(st.integers(1, 3))):
        action = draw(st.sampled_from(["overwrite-header", "overwrite", "truncate", "append"]))
        if action.startswith("overwrite") and data:
            limit = min(len(data), 16) if action == "overwrite-header" else len(data)
            data[draw(st.integers(0, limit - 1))] = draw(st.integers(0, 255))
        elif action == "truncate":
            del data[draw(st.integers(0, len(data))) :]
        else:
            data += draw(st.binary(min_size=1, max_size=8))
    return bytes(data), magic


@PROFILE
@given(valid_idx())
def test_valid_files_round_trip(sample: tuple[bytes, int]) -> None:
    content, magic = sample
    array = parse_idx(content, "sample", magic)
    assert idx_bytes(array) == content


@PROFILE
@given(mutated_idx())
def test_mutated_files(sample: tuple[bytes, int]) -> None:
    _check_parse(*sample)


@settings(max_examples=60, deadline=None)
@given(mutated_idx(), st.booleans(), st.integers(0, 40))
def test_mutated_files_through_the_readers(sample: tuple[bytes, int], compress: bool, cut: int) -> None:
    """The file-level readers (gzip detection, shape and label checks) on mutated, maybe gzipped, maybe cut files."""
    content, magic = sample
    raw = gzip.compress(content, mtime=0) if compress else content
    if compress and cut:
        raw = raw[:-cut]  # a truncated download
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / ("sample-idx.gz" if compress else "sample-idx")
        path.write_bytes(raw)
        reader = read_images if magic == IMAGE_MAGIC else read_labels
        try:
            array = reader(path)
        except DataError as error:
            assert path.name in str(error)
            return
    assert array.dtype == np.uint8
    if magic == IMAGE_MAGIC:
        assert array.ndim == 3 and array.shape[1:] == (IMAGE_SIDE, IMAGE_SIDE)
    else:
        assert array.ndim == 1 and (array.size == 0 or int(array.max()) < NUM_CLASSES)
