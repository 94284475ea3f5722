"""Atomic file writes (readers see the old file or the new one, never a mix, and a crash leaves no partial file),
and the lock that serializes writers across processes."""

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import filelock

from mnist_core.errors import StorageError

if TYPE_CHECKING:  # torch only for the annotation: the download path and launch/stack.py stay torch-free
    import torch


def _umask_file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


# Read once at import (os.umask is process-wide): mkstemp creates files 0600, but teammates sharing an output
# root must be able to read models, reports and the registry.
FILE_MODE = _umask_file_mode()


TEMP_SUFFIX = ".part"


def temp_files_glob(name: str) -> str:
    """The glob matching the temp files `atomic_write` leaves beside `name` if its process dies mid-write."""
    return f".{name}.*{TEMP_SUFFIX}"


@contextmanager
def exclusive_lock(path: Path, blocking: bool = True) -> Iterator[None]:
    """An exclusive lock on `path` (created, with its folder, if missing), through filelock (flock on POSIX): the
    kernel drops it if the process dies. With `blocking=False`, raises BlockingIOError at once if another process
    (or another lock object of this one) holds it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(path)
    try:
        lock.acquire(blocking=blocking)
    except filelock.Timeout:
        raise BlockingIOError(f"{path} is locked by another process") from None
    try:
        yield
    finally:
        lock.release()


def atomic_write(path: Path, write: Callable[[BinaryIO], None], check: Callable[[Path], None] | None = None) -> None:
    """Call `write` on a temp file beside `path`, fsync it, let `check` vet the temp file (it raises to refuse it),
    then `os.replace` it onto `path` and fsync the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as stream:
            os.fchmod(stream.fileno(), FILE_MODE)
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        if check is not None:
            check(Path(temp_name))
        os.replace(temp_name, path)
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    finally:
        Path(temp_name).unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda stream: stream.write(text.encode("utf-8")))


def atomic_save_tensors(
    tensors: "dict[str, torch.Tensor]", path: Path, metadata: dict[str, str], what: str = "prepared data"
) -> None:
    """Write a safetensors file so that a crash never leaves a partial file under `path`."""
    from safetensors.torch import save as safetensors_bytes

    try:
        content = safetensors_bytes({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata)
        atomic_write(path, lambda stream: stream.write(content))
    except Exception as error:
        # safetensors reports a full disk as its own SafetensorError, which names neither file nor cause clearly.
        raise StorageError(f"{path}: could not write {what} ({error}); the previous file was left as it was") from error
