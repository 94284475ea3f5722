"""Checks run before any work starts, so a bad folder or device fails in seconds, not after training."""

import tempfile
from pathlib import Path

from mnist_core.config import RunParams
from mnist_core.errors import StorageError
from mnist_core.registry.artifacts import configured_store
from mnist_core.registry.store import check_registry


def ensure_writable_dir(path: Path, field: str) -> Path:
    """`path` resolved, created if missing, and proven writable by creating a file in it."""
    resolved = Path(path).expanduser().resolve()
    if resolved.exists() and not resolved.is_dir():
        raise StorageError(f"{field}={str(path)!r}: {resolved} exists but is not a folder")
    try:
        resolved.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        reason = error.strerror or error
        raise StorageError(f"{field}={str(path)!r}: cannot create folder {resolved} ({reason})") from error
    # os.access lies for root and on some network file systems; only a real write proves the folder usable.
    try:
        with tempfile.TemporaryFile(prefix=".write-test-", dir=resolved):
            pass
    except OSError as error:
        reason = error.strerror or error
        raise StorageError(f"{field}={str(path)!r}: folder {resolved} is not writable ({reason})") from error
    return resolved


def preflight(params: RunParams) -> str:
    """Fail fast on a missing device (or bf16 asked of one without it), an unusable data or output folder, a
    damaged or unreachable registry, or an artifact store that does not take a write (each would otherwise fail
    the run only after training); returns the device (see `checked_device`)."""
    device = checked_device(params)
    ensure_writable_dir(params.data_dir, "data_dir")
    output_dir = ensure_writable_dir(params.output_dir, "output_dir")
    check_registry(output_dir, params.dataset)
    check_store()
    return device


def checked_device(params: RunParams) -> str:
    """The run's device, checked. `cpu` and `auto` in fp32 cannot fail: they are returned as they are, without
    importing torch (~1-2 s), so a run that stops as Unchanged never imports it; `training_device` resolves `auto`
    when training starts. Any other device, and bf16 on any, is resolved here (torch imported), and refused if
    missing."""
    if params.device in ("cpu", "auto") and params.precision != "bf16":
        return params.device
    from mnist_core.training.device import resolve_device
    from mnist_core.training.loop import use_bf16

    device = resolve_device(params.device)
    use_bf16(params.precision, device)
    return str(device)


def training_device(device: str) -> str:
    """`device` as `checked_device` returned it, with `auto` resolved (cuda, mps or cpu)."""
    if device != "auto":
        return device
    from mnist_core.training.device import resolve_device

    return str(resolve_device(device))


def check_store() -> None:
    """The artifact store (MNIST_ARTIFACT_STORE), when one is set, answers and takes a write: a store that is down
    is found before training, not after it (where the export would fail the run)."""
    store = configured_store()
    if store is not None:
        store.probe()
