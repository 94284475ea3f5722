"""What determines a run's model, as one SHA-256: the data (the dataset's files and the extra labelled images),
the training parameters, and the code that trains. A scheduled retrain whose fingerprint equals the champion's
would train the same model again, so it stops before training.

The code is the two packages whose every line can change the trained weights: `data/` (parsing, the split, the
uint8 tensors, a user's images turned into MNIST form) and `training/` (model, steps, optimizer, loop). Editing
evaluation, the report, the plots, export, the registry or `mnist predict` does not make the next run train."""

import hashlib
from pathlib import Path

from mnist_core.stamps import json_sha256

CODE_ROOT = Path(__file__).resolve().parent
TRAINING_CODE = ("data", "training")  # the packages of CODE_ROOT that decide what training computes


def code_digest(root: Path | None = None, packages: tuple[str, ...] = TRAINING_CODE) -> str:
    """SHA-256 over the names and bytes of the packages' Python sources (not their timestamps or bytecode)."""
    root = CODE_ROOT if root is None else root
    digest = hashlib.sha256()
    for path in sorted(path for package in packages for path in (root / package).rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def run_fingerprint(dataset_sha256: dict[str, str], extra_sha256: str | None, training_digest: str, code: str) -> str:
    facts = {"data": dataset_sha256, "extra_data": extra_sha256, "training": training_digest, "code": code}
    return json_sha256(facts)
