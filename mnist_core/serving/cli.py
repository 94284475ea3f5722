"""`mnist serve`: the champion's model (or any model `mnist predict --model` takes) over HTTP, following every
promotion. Pages and routes: / (draw or drop a digit), POST /predict, the Open Inference Protocol v2 under /v2,
/metrics. Set MNIST_SERVE_TOKEN to require `Authorization: Bearer TOKEN` on every route but health."""

import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from mnist_core.cli import parse_params
from mnist_core.config import DatasetName

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
SETTINGS_ENV = "MNIST_SERVE_SETTINGS"  # how `--workers N` hands the settings to each worker process
TOKEN_ENV = "MNIST_SERVE_TOKEN"


class ServeParams(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    host: str = Field("127.0.0.1", description="Address to listen on; anything but loopback wants MNIST_SERVE_TOKEN.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port.")
    dataset: DatasetName = Field("mnist", description="Whose champion to serve; also the v2 model name.")
    model: str = Field("champion", min_length=1, description="'champion' (followed), a run folder, run id or .onnx.")
    output_dir: Path = Field(Path("runs"), description="The training output root: champions and run folders.")
    workers: int = Field(1, ge=1, le=64, description="Server processes (each loads the model and follows it).")
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="Largest request body accepted.")
    max_images: int = Field(64, ge=1, description="Most images in one /predict request.")
    max_batch: int = Field(1024, ge=1, description="Most images in one v2 tensor.")
    body_timeout_s: float = Field(10.0, gt=0, description="A client sending nothing for this long gets 408.")
    poll_seconds: float = Field(1.0, gt=0, description="How often to look for a new champion.")


def settings_from(params: ServeParams, token: str | None) -> "ServeSettings":  # noqa: F821 - imported late
    from mnist_core.serving.app import ServeSettings

    return ServeSettings(
        dataset=params.dataset,
        model=params.model,
        output_dir=params.output_dir.expanduser().resolve(),
        token=token or None,
        max_body_bytes=params.max_body_bytes,
        max_images=params.max_images,
        max_batch=params.max_batch,
        body_timeout_s=params.body_timeout_s,
        poll_seconds=params.poll_seconds,
    )


def app_from_env():  # noqa: ANN201 - uvicorn's factory for --workers: each worker process builds its own app
    from mnist_core.serving.app import create_app

    params = ServeParams.model_validate_json(os.environ[SETTINGS_ENV])
    return create_app(settings_from(params, os.environ.get(TOKEN_ENV)))


def main(argv: Sequence[str]) -> int:
    params = parse_params(ServeParams, list(argv), __doc__, prog="mnist serve")
    token = os.environ.get(TOKEN_ENV, "").strip() or None
    if params.host not in LOOPBACK and token is None:
        print(f"mnist serve: warning: listening on {params.host} without a token: anyone who can reach this port can "
              f"use the model; set {TOKEN_ENV}", file=sys.stderr)  # fmt: skip
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    common = {"host": params.host, "port": params.port, "timeout_keep_alive": 5, "log_level": "warning",
              "access_log": False, "timeout_graceful_shutdown": 10}  # fmt: skip
    print(f"mnist serve: http://{params.host}:{params.port}/ ({params.dataset}, model {params.model}, "
          f"{params.workers} worker(s))", file=sys.stderr, flush=True)  # fmt: skip
    if params.workers == 1:
        from mnist_core.serving.app import create_app

        uvicorn.run(create_app(settings_from(params, token)), **common)
    else:
        os.environ[SETTINGS_ENV] = json.dumps(params.model_dump(mode="json"))
        uvicorn.run("mnist_core.serving.cli:app_from_env", factory=True, workers=params.workers, **common)
    return 0
