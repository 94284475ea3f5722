"""The settings of `mnist serve`, in one model: the CLI's flags are generated from it (`mnist_core.flags`), the app
takes it as it is, and `--workers N` hands it to each worker process as JSON. The token is not here: it comes from
the environment (MNIST_SERVE_TOKEN), never from a flag, which anyone on the machine could read in `ps`."""

from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from mnist_core.config import DatasetName
from mnist_core.settings import current as current_settings


def _absolute(path: Path) -> Path:
    # Resolved once, where the command was given: worker processes and the follower's thread see the same folder.
    return path.expanduser().resolve()


def _served_file(model: str) -> str:
    # Found by a docs check: a .safetensors file was served through torch (600 MB more, torch imported) and, outside
    # its run folder, without its card's calibration. The server runs ONNX Runtime only.
    path = Path(model).expanduser()
    if path.is_file() and path.suffix.lower() != ".onnx":
        raise ValueError(f"{model} is not an .onnx file: mnist serve runs model.onnx on ONNX Runtime (pass the run "
                         "folder, its run id or its model.onnx)")  # fmt: skip
    return model


class ServeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)

    host: str = Field("127.0.0.1", description="Address to listen on; anything but loopback wants MNIST_SERVE_TOKEN.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port.")
    dataset: DatasetName = Field("mnist", description="Whose champion to serve; also the v2 model name.")
    model: Annotated[str, AfterValidator(_served_file)] = Field(
        "champion", min_length=1, description="'champion' (followed), a run folder, run id or .onnx."
    )
    output_dir: Annotated[Path, AfterValidator(_absolute)] = Field(
        Path("runs"), validate_default=True, description="The training output root: champions and run folders."
    )
    workers: int = Field(1, ge=1, le=64, description="Server processes (each loads the model and follows it).")
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="Largest request body accepted.")
    max_images: int = Field(64, ge=1, description="Most images in one /predict request.")
    max_batch: int = Field(1024, ge=1, description="Most images in one v2 tensor.")
    max_pixels: int = Field(
        4_000_000, ge=1, description="Most pixels of one image, read from its header before it is decoded."
    )
    body_timeout_s: float = Field(10.0, gt=0, description="A client sending nothing for this long gets 408.")
    poll_seconds: float = Field(1.0, gt=0, description="How often to look for a new champion.")
    log_queue: int = Field(
        10_000, ge=1, description="Most predictions waiting to be written to the prediction log; more are dropped."
    )
    log_flush_seconds: float = Field(1.0, gt=0, description="How often the prediction log is written, in one batch.")
    image_retention_days: float = Field(
        7.0, ge=0, description="Days the prediction log keeps each prepared image (the row stays after)."
    )
    recent_predictions: int = Field(
        10_000, ge=1, description="Predictions kept in memory, so feedback finds them before they are written."
    )
    feedback_per_minute: int = Field(60, ge=1, description="Most POST /feedback per minute from one client address.")
    feedback_retrain_after: int = Field(
        default_factory=lambda: current_settings().feedback_retrain_after,
        ge=1,
        description="Corrections no run has trained on that make the server announce mnist.feedback.ready (once), "
        "which triggers mnist/train (default: the setting MNIST_FEEDBACK_RETRAIN_AFTER, 50).",
    )
    events_url: str | None = Field(
        default_factory=lambda: current_settings().prefect_api_url,
        description="The Prefect API the announcement goes to (default: the setting PREFECT_API_URL); none: only "
        "counted.",
    )
