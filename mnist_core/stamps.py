"""Identities and times written into records, one way each: SHA-256 of JSON facts and of files, UTC stamps."""

import hashlib
import json
import time
from pathlib import Path
from typing import Any


def json_sha256(facts: Any) -> str:
    """SHA-256 of `facts` as canonical JSON (sorted keys): equal facts, equal digest, whatever their order."""
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def utc_iso() -> str:
    """Now, e.g. 2026-12-06T16:40:00Z: for records a person reads."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def utc_compact() -> str:
    """Now, e.g. 20261206T164000Z: the start of file and run names, which sort by time."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
