"""`mnist serve`: the champion's model (or any model `mnist predict --model` takes) over HTTP, following every
promotion. Pages and routes: / (draw or drop a digit), POST /predict, the Open Inference Protocol v2 under /v2,
/metrics. Set MNIST_SERVE_TOKEN to require `Authorization: Bearer TOKEN` on every route but health."""

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from types import FrameType
from typing import Any

from mnist_core.flags import parse_params
from mnist_core.serving.settings import ServeSettings

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
SETTINGS_ENV = "MNIST_SERVE_SETTINGS"  # how `--workers N` hands the settings to each worker process
TOKEN_ENV = "MNIST_SERVE_TOKEN"


def token_from_env() -> str | None:
    from mnist_core.settings import current  # MNIST_SERVE_TOKEN, from the environment or the settings file

    return (current().secret("serve_token") or "").strip() or None


GRACE_SECONDS = 10  # how long a first Ctrl-C (or SIGTERM) waits for the requests in flight


class _NotCancelledRequests(logging.Filter):
    """Drops uvicorn's "Exception in ASGI application" traceback for a request cancelled because the server was
    stopped at once (a second Ctrl-C): ~40 lines each that say only that it was stopped (found by a fault battery)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], asyncio.CancelledError):
            return False
        # The app's lifespan, cancelled too, is reported by Starlette as a traceback in the message itself.
        return not record.getMessage().rstrip().endswith("CancelledError")


def _quiet_when_stopped_at_once() -> None:
    logging.getLogger("uvicorn.error").addFilter(_NotCancelledRequests())


def app_from_env():  # noqa: ANN201 - uvicorn's factory for --workers: each worker process builds its own app
    from mnist_core.serving.app import create_app

    _quiet_when_stopped_at_once()
    return create_app(ServeSettings.model_validate_json(os.environ[SETTINGS_ENV]), token=token_from_env())


def _serve(app: Any, options: dict[str, Any]) -> int:
    """uvicorn's single-process server, saying what a Ctrl-C does while requests are in flight: the first waits
    for them (up to GRACE_SECONDS, silently until now), a second drops them."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            busy = len(self.server_state.tasks)
            if busy and not self.should_exit:
                print(f"mnist serve: stopping: waiting up to {GRACE_SECONDS} s for {busy} request(s) in flight "
                      "(Ctrl-C again to stop now)", file=sys.stderr, flush=True)  # fmt: skip
            elif busy and sig == signal.SIGINT and not self.force_exit:
                print(f"mnist serve: stopping now: {busy} request(s) in flight dropped", file=sys.stderr, flush=True)
            super().handle_exit(sig, frame)

    _quiet_when_stopped_at_once()
    server = Server(uvicorn.Config(app, **options))
    with contextlib.suppress(KeyboardInterrupt):  # a second Ctrl-C: uvicorn raises it again once it has stopped
        server.run()
    return 0 if server.started else 3  # uvicorn's own status when it could not start (the port taken)


def main(argv: Sequence[str]) -> int:
    from mnist_core.settings import SettingsError

    try:  # a bad MNIST_* setting (the environment or a settings file): one line, as every command says it
        settings = parse_params(ServeSettings, list(argv), __doc__, prog="mnist serve")
        token = token_from_env()
    except SettingsError as error:
        print(f"mnist serve: error: {error}", file=sys.stderr)
        return 1
    if settings.host not in LOOPBACK and token is None:
        print(f"mnist serve: warning: listening on {settings.host} without a token: anyone who can reach this port "
              f"can use the model; set {TOKEN_ENV}", file=sys.stderr)  # fmt: skip
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    # httptools and uvloop come with uvicorn[standard] (pyproject): named rather than "auto", so a broken install
    # fails at start instead of quietly falling back to the pure-Python h11 parser and asyncio's loop.
    common = {"host": settings.host, "port": settings.port, "http": "httptools", "loop": "uvloop",
              "timeout_keep_alive": 5, "log_level": "warning", "access_log": False,
              "timeout_graceful_shutdown": GRACE_SECONDS}  # fmt: skip
    print(f"mnist serve: http://{settings.host}:{settings.port}/ ({settings.dataset}, model {settings.model}, "
          f"{settings.workers} worker(s))", file=sys.stderr, flush=True)  # fmt: skip
    if settings.workers == 1:
        from mnist_core.serving.app import create_app

        return _serve(create_app(settings, token=token), common)
    else:
        os.environ[SETTINGS_ENV] = settings.model_dump_json()
        uvicorn.run("mnist_core.serving.serve_command:app_from_env", factory=True, workers=settings.workers, **common)
    return 0
