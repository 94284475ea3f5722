"""The user's own labelled images: the folder verified whole, brought to MNIST form, split with a seed, and
described by a manifest; the prepared data trains on them and scores their test part apart."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mnist_core.data.download import download_dataset
from mnist_core.data.extra import class_index, read_extra, scan_extra, split_indices
from mnist_core.data.prepare import load_prepared, prepare_dataset
from mnist_core.errors import DataError
from tests.support.photos import write_photos


def labelled_folder(root: Path, digits: np.ndarray, labels: np.ndarray, names: dict[int, str] | None = None) -> Path:
    """An ImageFolder layout of photographed digits: <root>/<class>/photo-*.png|jpg."""
    for label in sorted(set(labels.tolist())):
        folder = root / (names or {}).get(label, str(label))
        write_photos(digits[labels == label], folder, seed=label)
    return root


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    """Synthetic digits: a different bar per class (the folder tests need images, not MNIST)."""
    rng = np.random.default_rng(0)
    images = np.zeros((40, 28, 28), np.uint8)
    labels = np.repeat(np.arange(10, dtype=np.uint8), 4)
    for index, label in enumerate(labels):
        images[index, 4 + 2 * label : 7 + 2 * label, 6 : 22 - int(rng.integers(0, 3))] = 255
    return images, labels


def test_class_folders_are_digits_or_class_names() -> None:
    assert class_index("7", "mnist") == 7 and class_index("07", "mnist") is None and class_index("x", "mnist") is None
    assert class_index("T-shirt_top", "fashion-mnist") == 0 and class_index("ankle boot", "fashion-mnist") == 9
    assert class_index("9", "fashion-mnist") == 9 and class_index("Sneakers", "fashion-mnist") is None
    # What `mnist feedback export` writes for "not a digit": the reserved class, for any dataset.
    assert class_index("not-a-digit", "mnist") == 10 and class_index("not_a_digit", "fashion-mnist") == 10
    assert class_index("not a clothing item", "fashion-mnist") == 10


def test_a_folder_is_read_whole_with_a_manifest(digits, tmp_path: Path) -> None:
    root = labelled_folder(tmp_path / "mine", *digits)
    folder = scan_extra(root, "mnist")
    assert len(folder.files) == len(folder.manifest) == 40
    assert sorted(folder.manifest)[0] == "0/photo-00000.png" and all(len(sha) == 64 for sha in folder.manifest.values())
    images, labels = read_extra(folder)
    assert images.shape == (40, 28, 28) and images.dtype == np.uint8
    assert sorted(labels.tolist()) == sorted(digits[1].tolist())
    # One more image changes the manifest's SHA-256: what makes the next scheduled run train.
    before = folder.sha256
    write_photos(digits[0][:1], root / "3", seed=99)
    assert scan_extra(root, "mnist").sha256 != before


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda root: (root / "seven").mkdir(), "folder name 'seven' is not a class of mnist"),
        (lambda root: (root / "stray.png").write_bytes(b"x"), "stray.png: a file outside the class folders"),
        (lambda root: (root / "3" / "notes.txt").write_text("hi"), "notes.txt: not an image file"),
        (lambda root: (root / "3" / "cut.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0"), "cut.png"),
        (lambda root: Image.new("L", (40, 40), 255).save(root / "4" / "white.png"), "white.png: no ink found"),
    ],
)
def test_one_bad_file_or_folder_refuses_the_whole_folder(damage, message: str, digits, tmp_path: Path) -> None:
    root = labelled_folder(tmp_path / "mine", *digits)
    damage(root)
    with pytest.raises(DataError, match="nothing used") as error:
        read_extra(scan_extra(root, "mnist"))
    assert message in str(error.value)


def test_every_problem_is_listed_in_one_go(digits, tmp_path: Path) -> None:
    """Found by a new user: layout problems were listed first, and a bad image only on the next try."""
    root = labelled_folder(tmp_path / "mine", *digits)
    (root / "readme.txt").write_text("mine")
    (root / "eleven").mkdir()
    (root / "3" / "junk.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="3 problem") as error:
        scan_extra(root, "mnist")
    assert all(name in str(error.value) for name in ("readme.txt", "'eleven'", "junk.png"))


def test_a_file_changed_between_scan_and_read_is_refused(digits, tmp_path: Path) -> None:
    """The manifest recorded with a run must describe the very bytes it trained on."""
    root = labelled_folder(tmp_path / "mine", *digits)
    folder = scan_extra(root, "mnist")
    changed, other = (sorted((root / label).iterdir())[0] for label in ("3", "4"))
    changed.write_bytes(other.read_bytes())  # another good image under the same name
    with pytest.raises(DataError, match="nothing used") as error:
        read_extra(folder)
    assert f"{changed}: changed since the folder was scanned" in str(error.value)
    assert len(read_extra(scan_extra(root, "mnist"))[1]) == 40  # scanned again: the new bytes are used


def test_an_empty_or_missing_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such folder"):
        scan_extra(tmp_path / "missing", "mnist")
    (tmp_path / "empty" / "3").mkdir(parents=True)
    with pytest.raises(DataError, match="no images in its class folders"):
        scan_extra(tmp_path / "empty", "mnist")
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(DataError, match="exists but is not a folder"):
        scan_extra(tmp_path / "a-file", "mnist")


def test_the_split_is_seeded_and_leaves_every_part_an_image() -> None:
    parts = split_indices(40, seed=0)
    assert {part: len(index) for part, index in parts.items()} == {"test": 6, "val": 6, "train": 28}
    assert sorted(np.concatenate(list(parts.values())).tolist()) == list(range(40))
    assert all((split_indices(40, seed=0)[part] == parts[part]).all() for part in parts)
    assert {part: len(index) for part, index in split_indices(3, seed=0).items()} == {"test": 1, "val": 1, "train": 1}


def test_prepared_data_trains_on_the_extra_images_and_tests_on_their_part(
    synthetic_dataset, digits, tmp_path: Path
) -> None:
    name, mirror, _ = synthetic_dataset
    downloaded = download_dataset(name, tmp_path / "cache", [str(mirror)])
    plain = prepare_dataset(downloaded, tmp_path / "cache", val_size=100, seed=0)
    folder = scan_extra(labelled_folder(tmp_path / "mine", *digits), "mnist")
    mixed = prepare_dataset(downloaded, tmp_path / "cache", val_size=100, seed=0, extra=folder)
    assert mixed.path != plain.path and mixed.extra_sha256 == folder.sha256 and mixed.extra_manifest == folder.manifest
    assert mixed.sizes == {"train": 1100 + 28, "val": 100 + 6, "test": 300, "extra_train": 28, "extra_val": 6,
                           "extra_test": 6, "extra_outliers": 0}  # fmt: skip
    tensors = load_prepared(mixed.path)
    assert tensors["extra_test_images"].shape == (6, 28, 28) and len(tensors["test_labels"]) == 300
    assert mixed.mean != plain.mean  # normalized with the statistics of what it trains on
    # Cached: the same folder again is not decoded again.
    stamp = mixed.path.stat().st_mtime_ns
    assert prepare_dataset(downloaded, tmp_path / "cache", val_size=100, seed=0, extra=folder) == mixed
    assert mixed.path.stat().st_mtime_ns == stamp
    # Corrections are all trained on (found by a docs check: 70 % were, the rest split off as validation and test),
    # in a cache file of their own.
    corrections = prepare_dataset(downloaded, tmp_path / "cache", val_size=100, seed=0, extra=folder,
                                  extra_all_train=True)  # fmt: skip
    assert corrections.path not in (mixed.path, plain.path)
    assert corrections.sizes == {"train": 1100 + 40, "val": 100, "test": 300, "extra_train": 40, "extra_val": 0,
                                 "extra_test": 0, "extra_outliers": 0}  # fmt: skip


def test_images_of_none_of_the_classes_are_kept_apart_as_outliers(synthetic_dataset, digits, tmp_path: Path) -> None:
    """A `not-a-digit` folder (corrections exported by `mnist feedback export`) is neither trained on as a class
    nor scored: its images are outliers, all of them, for outlier exposure."""
    name, mirror, _ = synthetic_dataset
    downloaded = download_dataset(name, tmp_path / "cache", [str(mirror)])
    images, labels = digits
    labels = np.where(labels >= 8, 10, labels).astype(np.uint8)  # the 8s and 9s become "not a digit"
    folder = scan_extra(labelled_folder(tmp_path / "mine", images, labels, {10: "not-a-digit"}), "mnist")
    prepared = prepare_dataset(downloaded, tmp_path / "cache", val_size=100, seed=0, extra=folder)
    tensors = load_prepared(prepared.path)
    assert prepared.sizes["extra_outliers"] == 8 and tensors["extra_outlier_images"].shape == (8, 28, 28)
    assert prepared.sizes["extra_train"] + prepared.sizes["extra_val"] + prepared.sizes["extra_test"] == 32
    assert all(int(tensors[f"{split}_labels"].max()) < 10 for split in ("train", "val", "test", "extra_test"))
