"""`mnist serve`: the champion's model (or any model `mnist predict --model` takes) over HTTP, following every
promotion. Pages and routes: / (draw or drop a digit), POST /predict, the Open Inference Protocol v2 under /v2,
/metrics. Set MNIST_SERVE_TOKEN to require `Authorization: Bearer TOKEN` on every route but health."""

import logging
import os
import sys
from collections.abc import Sequence

from mnist_core.flags import parse_params
from mnist_core.serving.settings import ServeSettings

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
SETTINGS_ENV = "MNIST_SERVE_SETTINGS"  # how `--workers N` hands the settings to each worker process
TOKEN_ENV = "MNIST_SERVE_TOKEN"


def token_from_env() -> str | None:
    from mnist_core.settings import current  # MNIST_SERVE_TOKEN, from the environment or the settings file

    return (current().secret("serve_token") or "").strip() or None


def app_from_env():  # noqa: ANN201 - uvicorn's factory for --workers: each worker process builds its own app
    from mnist_core.serving.app import create_app

    return create_app(ServeSettings.model_validate_json(os.environ[SETTINGS_ENV]), token=token_from_env())


def main(argv: Sequence[str]) -> int:
    settings = parse_params(ServeSettings, list(argv), __doc__, prog="mnist serve")
    token = token_from_env()
    if settings.host not in LOOPBACK and token is None:
        print(f"mnist serve: warning: listening on {settings.host} without a token: anyone who can reach this port "
              f"can use the model; set {TOKEN_ENV}", file=sys.stderr)  # fmt: skip
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    # httptools and uvloop come with uvicorn[standard] (pyproject): named rather than "auto", so a broken install
    # fails at start instead of quietly falling back to the pure-Python h11 parser and asyncio's loop.
    common = {"host": settings.host, "port": settings.port, "http": "httptools", "loop": "uvloop",
              "timeout_keep_alive": 5, "log_level": "warning", "access_log": False,
              "timeout_graceful_shutdown": 10}  # fmt: skip
    print(f"mnist serve: http://{settings.host}:{settings.port}/ ({settings.dataset}, model {settings.model}, "
          f"{settings.workers} worker(s))", file=sys.stderr, flush=True)  # fmt: skip
    if settings.workers == 1:
        from mnist_core.serving.app import create_app

        uvicorn.run(create_app(settings, token=token), **common)
    else:
        os.environ[SETTINGS_ENV] = settings.model_dump_json()
        uvicorn.run("mnist_core.serving.serve_command:app_from_env", factory=True, workers=settings.workers, **common)
    return 0
