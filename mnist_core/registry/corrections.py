"""The corrections people sent (POST /feedback) as training data: read from the registry's database and the
artifact store, never from a folder someone copied. The newest share (by the time they arrived) is held back to
score on; the rest is written as an image folder that the run reads through the extra-data path (data/extra.py),
so it is hashed into the run's fingerprint and manifest like any extra images.

A damaged correction (a label outside the classes, an image missing or not its SHA-256, not 28x28) is skipped
with one line; it never blocks a run.
"""

import hashlib
import io
import math
from pathlib import Path

import numpy as np
from PIL import Image

from mnist_core.data.extra import REFUSED_FOLDER
from mnist_core.data.idx import CLASS_NAMES, IMAGE_SIDE, REFUSED_CLASS
from mnist_core.files import atomic_write
from mnist_core.records import Corrections
from mnist_core.registry.feedback import FeedbackStore


def gather_corrections(store: FeedbackStore, dataset: str, cache_root: Path, holdout: float) -> Corrections:
    """Every usable correction of `dataset`: the older part as an image folder under `cache_root/corrections/`
    (content-addressed: the same corrections give the same folder), the newest `holdout` share (at least one when
    there are two or more) as held-back images and labels in that folder's `held_back.npz`."""
    rows, skipped = [], []
    for row in store.feedback(dataset):
        problem, image = _usable(store, row)
        if problem:
            skipped.append(f"feedback {row['id']}: {problem} (skipped)")
        else:
            rows.append((row, image))
    rows.sort(key=lambda pair: (pair[0]["at"], pair[0]["id"]))  # by the time they arrived
    held = math.ceil(holdout * len(rows)) if len(rows) >= 2 else 0
    trained, held_back = rows[: len(rows) - held], rows[len(rows) - held :]
    key = hashlib.sha256(";".join(f"{row['id']}:{row['label']}" for row, _ in rows).encode()).hexdigest()[:16]
    folder = Path(cache_root).expanduser().resolve() / "corrections" / f"{dataset}-{key}"
    names = [REFUSED_FOLDER if label == REFUSED_CLASS else name.replace("/", "_")
             for label, name in enumerate([*CLASS_NAMES[dataset], REFUSED_FOLDER])]  # fmt: skip
    for row, image in trained:
        target = folder / "images" / names[row["label"]] / f"feedback-{row['id']}.png"
        if not target.is_file():
            buffer = io.BytesIO()
            Image.fromarray(image, "L").save(buffer, "PNG")
            target.parent.mkdir(parents=True, exist_ok=True)
            png = buffer.getvalue()
            atomic_write(target, lambda handle, png=png: handle.write(png))
    held_images = np.stack([image for _, image in held_back]) if held_back else np.zeros((0, 28, 28), np.uint8)
    held_labels = np.array([row["label"] for row, _ in held_back], dtype=np.int64)
    buffer = io.BytesIO()
    np.savez(buffer, images=held_images, labels=held_labels)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / "held_back.npz", lambda handle: handle.write(buffer.getvalue()))
    return Corrections(
        dataset=dataset,
        folder=folder / "images" if trained else None,
        held_back=folder / "held_back.npz",
        trained_ids=[int(row["id"]) for row, _ in trained],
        held_back_ids=[int(row["id"]) for row, _ in held_back],
        skipped=skipped,
    )


def _usable(store: FeedbackStore, row: dict) -> tuple[str | None, np.ndarray | None]:
    label = row.get("label")
    if not isinstance(label, int) or not 0 <= label <= REFUSED_CLASS:
        return f"label {label!r} is not a class", None
    try:
        content = store.image(row)
    except Exception as error:  # noqa: BLE001 - a missing or damaged object: this correction is skipped
        return f"image unreadable ({error})", None
    if content is None:
        return "no image", None
    if len(content) != IMAGE_SIDE * IMAGE_SIDE or hashlib.sha256(content).hexdigest() != row.get("image_sha256"):
        return "image damaged (not the 28x28 image its SHA-256 names)", None
    return None, np.frombuffer(content, np.uint8).reshape(IMAGE_SIDE, IMAGE_SIDE).copy()


def load_held_back(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as archive:
        return archive["images"], archive["labels"]
