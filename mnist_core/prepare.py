"""The transform stage: validated IDX files -> one cached file of uint8 tensors with a seeded validation split."""

import hashlib
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from mnist_core.errors import DataError
from mnist_core.files import atomic_save_tensors
from mnist_core.idx import read_split
from mnist_core.records import Downloaded, Prepared

SPLITS = ("train", "val", "test")
TENSOR_NAMES = frozenset(f"{split}_{kind}" for split in SPLITS for kind in ("images", "labels"))


def prepared_path(cache_root: Path, dataset: str, sha256s: dict[str, str], val_size: int, seed: int) -> Path:
    content_key = hashlib.sha256("".join(sorted(sha256s.values())).encode()).hexdigest()[:16]
    name = f"{dataset}-{content_key}-val{val_size}-seed{seed}.safetensors"
    return Path(cache_root).expanduser().resolve() / "prepared" / name


def _cached_sizes(path: Path) -> dict[str, int] | None:
    """Images per split of a complete cached file, or None when there is none (or it is unreadable)."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            if set(handle.keys()) != TENSOR_NAMES:
                return None
            return {split: handle.get_slice(f"{split}_labels").get_shape()[0] for split in SPLITS}
    except Exception:  # noqa: BLE001 - an unreadable cache entry is rebuilt
        return None


def prepare_dataset(downloaded: Downloaded, cache_root: Path, val_size: int, seed: int) -> Prepared:
    """Parse and validate the four IDX files, split off `val_size` training images, cache as uint8 tensors."""
    target = prepared_path(cache_root, downloaded.dataset, downloaded.sha256, val_size, seed)
    sizes = _cached_sizes(target)
    if sizes is not None:
        return Prepared(dataset=downloaded.dataset, path=target, sizes=sizes)

    files = downloaded.files
    train_images, train_labels = read_split(files["train_images"].path, files["train_labels"].path)
    test_images, test_labels = read_split(files["test_images"].path, files["test_labels"].path)
    if val_size >= len(train_images):
        raise DataError(f"val_size={val_size} leaves no training images (the training set has {len(train_images)})")

    order = torch.randperm(len(train_images), generator=torch.Generator().manual_seed(seed))
    val_index, train_index = order[:val_size], order[val_size:]
    images, labels = torch.from_numpy(train_images.copy()), torch.from_numpy(train_labels.copy())
    tensors = {
        "train_images": images[train_index],
        "train_labels": labels[train_index],
        "val_images": images[val_index],
        "val_labels": labels[val_index],
        "test_images": torch.from_numpy(test_images.copy()),
        "test_labels": torch.from_numpy(test_labels.copy()),
    }
    metadata = {"dataset": downloaded.dataset, "val_size": str(val_size), "seed": str(seed)}
    metadata.update({f"sha256_{role}": digest for role, digest in downloaded.sha256.items()})
    atomic_save_tensors(tensors, target, metadata)
    sizes = {split: len(tensors[f"{split}_labels"]) for split in SPLITS}
    return Prepared(dataset=downloaded.dataset, path=target, sizes=sizes)


def load_prepared(path: Path, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """The six uint8 tensors of a prepared file, on `device`."""
    try:
        return load_file(str(path), device=str(device))
    except Exception as error:
        raise DataError(f"{path}: cannot read prepared data ({error}); delete it to rebuild") from error
