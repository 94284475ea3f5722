"""The user's own labelled images: a folder in torchvision's ImageFolder layout (one subfolder per class, named
by its digit or class name), verified whole, brought to MNIST form like `mnist predict`'s inputs, split with a
seed into train / validation / test, and described by a manifest (the SHA-256 of every file)."""

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mnist_core.data.idx import CLASS_NAMES, REFUSED_CLASS, refused_name
from mnist_core.data.images import IMAGE_SUFFIXES, load_image
from mnist_core.errors import DataError
from mnist_core.stamps import json_sha256

VAL_FRACTION = 0.15
TEST_FRACTION = 0.15
MAX_LISTED_PROBLEMS = 20
REFUSED_FOLDER = "not-a-digit"


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def class_index(folder: str, dataset: str) -> int | None:
    """The class a subfolder names: its digit, or (Fashion-MNIST) its class name with any case or punctuation,
    e.g. `T-shirt_top` or `ankle boot`; `not-a-digit` (or the dataset's own words for it) names REFUSED_CLASS:
    images that are none of the classes, trained on as outliers (what `mnist feedback export` writes)."""
    names = CLASS_NAMES[dataset]
    if _key(folder) in (_key(REFUSED_FOLDER), _key(refused_name(dataset))):
        return REFUSED_CLASS
    if folder.isdigit() and int(folder) < len(names) and str(int(folder)) == folder:
        return int(folder)
    keys = [_key(name) for name in names]
    return keys.index(_key(folder)) if _key(folder) in keys else None


def manifest_sha256(manifest: dict[str, str]) -> str:
    return json_sha256(manifest)


def _labelled_files(root: Path, dataset: str) -> tuple[list[tuple[Path, int]], list[str]]:
    """Every (file, class) of the folder, and every problem with its layout."""
    if root.exists() and not root.is_dir():
        raise DataError(f"extra_data={str(root)!r}: exists but is not a folder (one subfolder per class)")
    if not root.is_dir():
        raise DataError(f"extra_data={str(root)!r}: no such folder")
    files, problems = [], []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir():
            problems.append(f"{entry}: a file outside the class folders has no label; move it into one")
            continue
        label = class_index(entry.name, dataset)
        if label is None:
            expected = (", ".join(CLASS_NAMES[dataset]) if dataset != "mnist" else "0-9") + f", {REFUSED_FOLDER}"
            problems.append(f"{entry}: folder name {entry.name!r} is not a class of {dataset} (expected {expected})")
            continue
        for path in sorted(entry.rglob("*")):
            if path.is_dir() or any(part.startswith(".") for part in path.relative_to(root).parts):
                continue
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                problems.append(f"{path}: not an image file (expected {', '.join(sorted(IMAGE_SUFFIXES))})")
                continue
            files.append((path, label))
    return files, problems


@dataclass(frozen=True)
class ExtraFolder:
    """The folder's labelled files and their manifest: enough to know whether its prepared data is cached."""

    root: Path
    files: list[tuple[Path, int]]
    manifest: dict[str, str]  # "<class folder>/<file>" -> SHA-256 of the file's bytes
    dataset: str = "mnist"  # whose form the images are brought to

    @property
    def sha256(self) -> str:
        return manifest_sha256(self.manifest)


def _refuse(root: Path, problems: list[str]) -> DataError:
    listed = "\n  ".join(problems[:MAX_LISTED_PROBLEMS])
    more = f"\n  ... and {len(problems) - MAX_LISTED_PROBLEMS} more" if len(problems) > MAX_LISTED_PROBLEMS else ""
    return DataError(f"extra_data {root}: {len(problems)} problem(s), nothing used:\n  {listed}{more}")


def scan_extra(root: Path, dataset: str) -> ExtraFolder:
    """The folder's layout checked and every file hashed (cheap: nothing decoded, unless the layout is refused:
    then its images are decoded too, so that one refusal lists every problem)."""
    root = Path(root).expanduser().resolve()
    files, problems = _labelled_files(root, dataset)
    if not problems and not files:
        problems.append(f"{root}: no images in its class folders")
    if problems:
        # Every problem in one go: with the layout refused, the images are decoded too (only on this path: a good
        # folder's images are decoded once, by read_extra, and only when its prepared data is not cached).
        problems += [str(loaded.error) for path, _ in files if (loaded := load_image(path, dataset=dataset)).error]
        raise _refuse(root, problems)
    manifest = {path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest() for path, _ in files}
    return ExtraFolder(root, files, manifest, dataset)


def read_extra(folder: ExtraFolder) -> tuple[np.ndarray, np.ndarray]:
    """Every image in MNIST form with its label, or one DataError listing every file that cannot be used: a run
    never trains on part of the user's data. Each file is decoded from bytes checked against the manifest, so the
    manifest recorded with the run describes exactly what it trained on."""
    images, labels, problems = [], [], []
    for path, label in folder.files:
        key = path.relative_to(folder.root).as_posix()
        try:
            content = path.read_bytes()
        except OSError as error:
            problems.append(f"{path}: unreadable ({error.strerror or error})")
            continue
        if hashlib.sha256(content).hexdigest() != folder.manifest[key]:
            problems.append(f"{path}: changed since the folder was scanned; run again once it is settled")
            continue
        loaded = load_image(path, content, folder.dataset)
        if loaded.image is None:
            problems.append(str(loaded.error))
        else:
            images.append(loaded.image)
            labels.append(label)
    if problems:
        raise _refuse(folder.root, problems)
    return np.stack(images), np.array(labels, dtype=np.uint8)


def split_indices(count: int, seed: int) -> dict[str, np.ndarray]:
    """Seeded train / val / test parts; with 3 images or more, each part gets at least one."""
    order = np.random.default_rng(seed).permutation(count)
    test = max(1, round(TEST_FRACTION * count)) if count >= 3 else 0
    val = max(1, round(VAL_FRACTION * count)) if count >= 3 else 0
    return {"test": order[:test], "val": order[test : test + val], "train": order[test + val :]}
