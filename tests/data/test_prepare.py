from pathlib import Path

import pytest
import torch

from mnist_core.data.download import download_dataset
from mnist_core.data.prepare import load_prepared, prepare_dataset


def test_split_sizes_disjoint_and_seeded(synthetic_dataset, tmp_path: Path) -> None:
    name, mirror, _ = synthetic_dataset
    downloaded = download_dataset(name, tmp_path, [str(mirror)])
    path = prepare_dataset(downloaded, tmp_path, val_size=200, seed=5).path
    data = load_prepared(path)
    assert len(data["val_images"]) == 200 and len(data["train_images"]) == 1000
    assert all(tensor.dtype == torch.uint8 for tensor in data.values())
    # Seeded: the same seed gives the same split, another seed another one.
    again = load_prepared(prepare_dataset(downloaded, tmp_path / "other", val_size=200, seed=5).path)
    torch.testing.assert_close(again["val_images"], data["val_images"])
    different = load_prepared(prepare_dataset(downloaded, tmp_path, val_size=200, seed=6).path)
    assert not torch.equal(different["val_labels"], data["val_labels"])
    # Disjoint: together the two parts are exactly the original training set.
    combined = torch.cat([data["train_images"], data["val_images"]]).flatten(1)
    assert len(torch.unique(combined, dim=0)) == len(combined)


def test_prepared_file_is_built_once(synthetic_dataset, tmp_path: Path) -> None:
    name, mirror, _ = synthetic_dataset
    downloaded = download_dataset(name, tmp_path, [str(mirror)])
    prepared = prepare_dataset(downloaded, tmp_path, val_size=100, seed=0)
    stamp = prepared.path.stat().st_mtime_ns
    assert prepare_dataset(downloaded, tmp_path, val_size=100, seed=0) == prepared
    assert prepared.path.stat().st_mtime_ns == stamp
    assert prepared.sizes == {"train": 1100, "val": 100, "test": 300, "extra_train": 0, "extra_val": 0, "extra_test": 0,
                              "extra_outliers": 0}  # fmt: skip
    # The model's normalization: the statistics of the pixels it trains on, not MNIST's constants.
    train = load_prepared(prepared.path)["train_images"].double() / 255
    assert prepared.mean == pytest.approx(train.mean().item(), abs=1e-12)
    assert prepared.std == pytest.approx(train.std(correction=0).item(), abs=1e-12)


def test_a_cached_file_with_bytes_overwritten_in_its_labels_is_built_again(synthetic_dataset, tmp_path: Path) -> None:
    """Found by a new user: 1,000 bytes of train_labels overwritten in place (the size and header kept) failed every
    later run in training with "index 200 is out of bounds"; the cache check now reads the labels."""
    name, mirror, _ = synthetic_dataset
    downloaded = download_dataset(name, tmp_path, [str(mirror)])
    path = prepare_dataset(downloaded, tmp_path, val_size=100, seed=0).path
    good = {name: tensor.clone() for name, tensor in load_prepared(path).items()}  # not a view of the file
    content = bytearray(path.read_bytes())
    labels = content.index(good["train_labels"].numpy().tobytes())
    content[labels : labels + 500] = b"\xc8" * 500
    path.write_bytes(bytes(content))
    assert load_prepared(path)["train_labels"].max() == 200
    prepare_dataset(downloaded, tmp_path, val_size=100, seed=0)
    assert torch.equal(load_prepared(path)["train_labels"], good["train_labels"])


def test_real_mnist_split(mnist_tensors: dict[str, torch.Tensor]) -> None:
    assert mnist_tensors["train_images"].shape == (55000, 28, 28)
    assert mnist_tensors["val_images"].shape == (5000, 28, 28)
    assert mnist_tensors["test_images"].shape == (10000, 28, 28)
    assert int(mnist_tensors["train_labels"].max()) == 9


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised when CUDA is missing")
def test_a_missing_device_is_not_blamed_on_the_prepared_file(synthetic_dataset, tmp_path: Path) -> None:
    """Seen while preparing the GPU check: a device that fails used to read "cannot read prepared data ...;
    delete it to rebuild", advice that would throw away a good file."""
    name, mirror, _ = synthetic_dataset
    path = prepare_dataset(download_dataset(name, tmp_path, [str(mirror)]), tmp_path, val_size=100, seed=0).path
    with pytest.raises((RuntimeError, AssertionError)) as raised:  # a CPU-only torch build raises AssertionError
        load_prepared(path, "cuda")
    assert "delete it" not in str(raised.value) and path.is_file()
    assert len(load_prepared(path)["val_images"]) == 100
