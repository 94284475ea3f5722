"""The project's own error types: each message names the file, field or value at fault."""


class PipelineError(Exception):
    """Base of every error the pipeline raises on purpose."""


class DataError(PipelineError):
    """A dataset file is missing, corrupt, or not what its name promises."""


class DownloadError(DataError):
    """No mirror could deliver a verified copy of a file."""


class TrainingError(PipelineError):
    """Training cannot go on (diverged, or a checkpoint does not fit the parameters)."""


class DeviceError(PipelineError):
    """The requested device is not available on this machine."""


class StorageError(PipelineError):
    """A file or folder cannot be written (not writable, not a folder, disk full); nothing half-written is kept."""


def disguised_interrupt(error: BaseException) -> BaseException | None:
    """The KeyboardInterrupt (or other non-Exception: SystemExit, Prefect's TerminationSignal) that `error` was
    raised from, if any, following __cause__ and __context__: a Ctrl-C that lands inside a library can come out
    wrapped in an ordinary exception (pydantic's serializers raise PydanticSerializationError from it), which must
    still stop the run, never be retried or logged as a failure."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if not isinstance(current, Exception):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
