import gzip
from pathlib import Path

import numpy as np

from mnist_core.data.idx import read_images, read_labels, read_split
from tests.support.synthetic import idx_bytes, learnable_split


def test_round_trip_gzip_and_plain(tmp_path: Path) -> None:
    images, labels = learnable_split(50, seed=3)
    (tmp_path / "images.gz").write_bytes(gzip.compress(idx_bytes(images)))
    (tmp_path / "labels").write_bytes(idx_bytes(labels))
    read_x, read_y = read_split(tmp_path / "images.gz", tmp_path / "labels")
    np.testing.assert_array_equal(read_x, images)
    np.testing.assert_array_equal(read_y, labels)
    assert read_x.dtype == np.uint8 and read_x.shape == (50, 28, 28)


def test_real_mnist_shapes(mnist_mirror: Path) -> None:
    images = read_images(mnist_mirror / "t10k-images-idx3-ubyte.gz")
    labels = read_labels(mnist_mirror / "t10k-labels-idx1-ubyte.gz")
    assert images.shape == (10000, 28, 28)
    assert labels.shape == (10000,)
    assert set(np.unique(labels).tolist()) == set(range(10))
