"""What determines a run's model, as one SHA-256: the data (the dataset's files and the extra labelled images),
the training parameters, and the code that trains. A scheduled retrain whose fingerprint equals the champion's
would train the same model again, so it stops before training."""

import hashlib
import json
from pathlib import Path

CODE_ROOT = Path(__file__).resolve().parent  # mnist_core: everything that decides what training computes


def code_digest(root: Path | None = None) -> str:
    """SHA-256 over the names and bytes of the package's Python sources (not their timestamps or bytecode)."""
    root = CODE_ROOT if root is None else root
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def run_fingerprint(dataset_sha256: dict[str, str], extra_sha256: str | None, training_digest: str, code: str) -> str:
    facts = {"data": dataset_sha256, "extra_data": extra_sha256, "training": training_digest, "code": code}
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()
