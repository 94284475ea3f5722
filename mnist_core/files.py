"""Atomic file writes: readers see the old file or the new one, never a mix, and a crash leaves no partial file."""

import os
import tempfile
from pathlib import Path


def _umask_file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


# Read once at import (os.umask is process-wide): mkstemp creates files 0600, but teammates sharing an output
# root must be able to read reports and the registry.
FILE_MODE = _umask_file_mode()


def atomic_write_text(path: Path, text: str) -> None:
    """Write beside the target, fsync, then `os.replace`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        os.fchmod(descriptor, FILE_MODE)
        with os.fdopen(descriptor, "w", encoding="utf-8", newline="") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp_name, path)
    finally:
        Path(temp_name).unlink(missing_ok=True)
