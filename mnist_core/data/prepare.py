"""The transform stage: validated IDX files (and the user's extra labelled images) -> one cached file of uint8
tensors with seeded validation splits, and the normalization statistics of the images trained on."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from safetensors import safe_open

from mnist_core.data.extra import ExtraFolder, read_extra, split_indices
from mnist_core.data.idx import IMAGE_SIDE, REFUSED_CLASS, read_split
from mnist_core.data.images import IMAGE_FORM_VERSION
from mnist_core.errors import DataError
from mnist_core.files import atomic_save_tensors
from mnist_core.records import Downloaded, Prepared

if TYPE_CHECKING:  # torch is imported where tensors are made: a cache check needs none of it (~1-2 s)
    import torch

# extra_test: the test part of the user's own images (empty without them), scored apart from the dataset's test set.
SPLITS = ("train", "val", "test", "extra_test")
# extra_outlier_images: the user's images of none of the classes (a `not-a-digit` folder), for outlier exposure.
TENSOR_NAMES = frozenset(f"{split}_{kind}" for split in SPLITS for kind in ("images", "labels")) | {
    "extra_outlier_images"
}


def prepared_path(
    cache_root: Path,
    dataset: str,
    sha256s: dict[str, str],
    val_size: int,
    seed: int,
    extra_sha256: str | None = None,
    extra_repeat: int = 1,
    extra_all_train: bool = False,
) -> Path:
    # The user's images are prepared by code (images.py): a new preparation must not reuse an older one's cache.
    extra_key = f"{extra_sha256}:form{IMAGE_FORM_VERSION}" if extra_sha256 else ""
    if extra_sha256 and extra_repeat > 1:
        extra_key += f":x{extra_repeat}"
    if extra_sha256 and extra_all_train:
        extra_key += ":all-train"
    content_key = hashlib.sha256("".join([*sorted(sha256s.values()), extra_key]).encode()).hexdigest()[:16]
    name = f"{dataset}-{content_key}-val{val_size}-seed{seed}.safetensors"
    return Path(cache_root).expanduser().resolve() / "prepared" / name


def _cached(path: Path) -> tuple[dict[str, int], float, float] | None:
    """Images per split and the normalization statistics of a complete cached file, or None when there is none
    (or it is unreadable, or from before these were kept)."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="numpy") as handle:
            metadata = handle.metadata() or {}
            if set(handle.keys()) != TENSOR_NAMES or "mean" not in metadata:
                return None
            # Bytes overwritten in place keep the file's size and header: a label out of the classes would only
            # fail training, with an index error, run after run. The labels are 70 kB to read; the images are not
            # checked (a damaged pixel misleads no index).
            if any(_out_of_classes(handle.get_tensor(f"{split}_labels")) for split in SPLITS):
                return None
            sizes = {split: handle.get_slice(f"{split}_labels").get_shape()[0] for split in SPLITS}
            sizes.update(json.loads(metadata["extra_sizes"]))
            return sizes, float(metadata["mean"]), float(metadata["std"])
    except Exception:  # noqa: BLE001 - an unreadable cache entry is rebuilt
        return None


def _out_of_classes(labels: np.ndarray) -> bool:
    return bool(labels.size) and int(labels.max()) > REFUSED_CLASS


def pixel_statistics(images: torch.Tensor) -> tuple[float, float]:
    """Mean and standard deviation of the pixels (scaled to 0-1) of the images the model is trained on: the
    model's input normalization, for MNIST, Fashion-MNIST or a mix with the user's images alike."""
    import torch

    pixels = images.to(torch.float64).div_(255.0)
    return pixels.mean().item(), pixels.std(correction=0).item()


def _extra_parts(
    extra: ExtraFolder | None, seed: int, all_train: bool = False
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The user's labelled images split into train, val and test (`all_train`: all of them train, as corrections
    are: a run learning from them holds its newest back itself); those of none of the classes (REFUSED_CLASS)
    apart, as "outliers" (all of them: they are trained against, never scored)."""
    import torch

    empty = (torch.zeros(0, IMAGE_SIDE, IMAGE_SIDE, dtype=torch.uint8), torch.zeros(0, dtype=torch.uint8))
    if extra is None:
        return {"train": empty, "val": empty, "test": empty, "outliers": empty}
    images, labels = read_extra(extra)
    outside = labels == REFUSED_CLASS
    outliers = (torch.from_numpy(images[outside]), torch.from_numpy(labels[outside]))
    images, labels = images[~outside], labels[~outside]
    if all_train:
        nothing = np.zeros(0, dtype=np.int64)
        parts = {"train": np.arange(len(images)), "val": nothing, "test": nothing}
    else:
        parts = split_indices(len(images), seed)
    split = {part: (torch.from_numpy(images[index]), torch.from_numpy(labels[index])) for part, index in parts.items()}
    return {**split, "outliers": outliers}


def prepare_dataset(
    downloaded: Downloaded,
    cache_root: Path,
    val_size: int,
    seed: int,
    extra: ExtraFolder | None = None,
    extra_repeat: int = 1,
    extra_all_train: bool = False,
) -> Prepared:
    """Parse and validate the four IDX files, split off `val_size` training images, add the parts of the extra
    images (`scan_extra`; their training part `extra_repeat` times; `extra_all_train`: all of them training), and
    cache the lot as uint8 tensors."""
    extra_sha256 = extra.sha256 if extra else None
    target = prepared_path(
        cache_root, downloaded.dataset, downloaded.sha256, val_size, seed, extra_sha256, extra_repeat, extra_all_train
    )
    cached = _cached(target)
    if cached is not None:
        return _prepared(downloaded.dataset, target, *cached, extra)
    import torch

    files = downloaded.files
    train_images, train_labels = read_split(files["train_images"].path, files["train_labels"].path)
    test_images, test_labels = read_split(files["test_images"].path, files["test_labels"].path)
    if val_size >= len(train_images):
        raise DataError(f"val_size={val_size} leaves no training images (the training set has {len(train_images)})")

    order = torch.randperm(len(train_images), generator=torch.Generator().manual_seed(seed))
    val_index, train_index = order[:val_size], order[val_size:]
    images, labels = torch.from_numpy(train_images.copy()), torch.from_numpy(train_labels.copy())
    extra_parts = _extra_parts(extra, seed, extra_all_train)
    tensors = {
        "train_images": torch.cat([images[train_index], extra_parts["train"][0].repeat(extra_repeat, 1, 1)]),
        "train_labels": torch.cat([labels[train_index], extra_parts["train"][1].repeat(extra_repeat)]),
        "val_images": torch.cat([images[val_index], extra_parts["val"][0]]),
        "val_labels": torch.cat([labels[val_index], extra_parts["val"][1]]),
        "test_images": torch.from_numpy(test_images.copy()),
        "test_labels": torch.from_numpy(test_labels.copy()),
        "extra_test_images": extra_parts["test"][0],
        "extra_test_labels": extra_parts["test"][1],
        "extra_outlier_images": extra_parts["outliers"][0],
    }
    mean, std = pixel_statistics(tensors["train_images"])
    # How many of the train and val images are the user's (extra_test is a split of its own).
    extra_sizes = {
        "extra_train": len(extra_parts["train"][1]),
        "extra_val": len(extra_parts["val"][1]),
        "extra_outliers": len(extra_parts["outliers"][1]),
    }
    metadata = {
        "dataset": downloaded.dataset,
        "val_size": str(val_size),
        "seed": str(seed),
        "mean": repr(mean),
        "std": repr(std),
        "extra_sha256": extra_sha256 or "",
        "extra_sizes": json.dumps(extra_sizes),
    }
    metadata.update({f"sha256_{role}": digest for role, digest in downloaded.sha256.items()})
    atomic_save_tensors(tensors, target, metadata)
    sizes = {**{split: len(tensors[f"{split}_labels"]) for split in SPLITS}, **extra_sizes}
    return _prepared(downloaded.dataset, target, sizes, mean, std, extra)


def _prepared(
    dataset: str, path: Path, sizes: dict[str, int], mean: float, std: float, extra: ExtraFolder | None
) -> Prepared:
    return Prepared(
        dataset=dataset,
        path=path,
        sizes=sizes,
        mean=mean,
        std=std,
        extra_sha256=extra.sha256 if extra else None,
        extra_manifest=extra.manifest if extra else {},
    )


def load_prepared(path: Path, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """The uint8 tensors of a prepared file (images and labels of each split), on `device`.

    Read on the CPU, then moved: a device that fails (no driver, out of memory) raises its own error, not one
    that blames the file and advises deleting it."""
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path), device="cpu")
    except Exception as error:
        raise DataError(f"{path}: cannot read prepared data ({error}); delete it to rebuild") from error
    return {name: tensor.to(device) for name, tensor in tensors.items()}
