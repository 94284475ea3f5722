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
