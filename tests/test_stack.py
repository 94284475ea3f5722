"""deployments/stack.py without Prefect: its API calls against a scripted HTTP server on loopback."""

import json
import threading
import urllib.error
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from deployments import stack as stack_module
from deployments.stack import Stack


class ScriptedServer:
    """Answers each request with the next status code of `codes` (the last one repeats), and counts requests."""

    def __init__(self, codes: list[int]) -> None:
        self.codes, self.requests = codes, 0
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                code = scripted.codes[min(scripted.requests, len(scripted.codes) - 1)]
                scripted.requests += 1
                body = json.dumps({"id": "run-1"} if code == 200 else {"exception_message": "busy"}).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]


@pytest.fixture
def scripted(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[ScriptedServer]:
    monkeypatch.setattr(stack_module, "API_RETRY_DELAYS_S", (0.01, 0.01, 0.01))
    server = ScriptedServer(request.param)
    thread = threading.Thread(target=server.server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


def _stack(tmp_path: Path, port: int) -> Stack:
    return Stack(tmp_path / "state", "127.0.0.1", port, "mnist-pool")


@pytest.mark.parametrize("scripted", [[503, 503, 200]], indirect=True)
def test_api_retries_when_the_server_is_busy(scripted: ScriptedServer, tmp_path: Path) -> None:
    answer = _stack(tmp_path, scripted.port).api("POST", "/deployments/x/create_flow_run", {"parameters": {}})
    assert answer == {"id": "run-1"}
    assert scripted.requests == 3


@pytest.mark.parametrize("scripted", [[503]], indirect=True)
def test_api_gives_up_after_its_retries(scripted: ScriptedServer, tmp_path: Path) -> None:
    with pytest.raises(urllib.error.HTTPError, match="503"):
        _stack(tmp_path, scripted.port).api("POST", "/flow_runs/filter", {})
    assert scripted.requests == 4  # the first try and three retries


@pytest.mark.parametrize("scripted", [[500, 200]], indirect=True)
def test_api_does_not_retry_a_server_error(scripted: ScriptedServer, tmp_path: Path) -> None:
    with pytest.raises(urllib.error.HTTPError, match="500"):
        _stack(tmp_path, scripted.port).api("POST", "/flow_runs/filter", {})
    assert scripted.requests == 1


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql+asyncpg://prefect:p@ss@db-host/x", "postgresql+asyncpg://***@db-host/x"),
        (
            "postgresql+asyncpg://prefect:s3cret@127.0.0.1:5432/prefect",
            "postgresql+asyncpg://***@127.0.0.1:5432/prefect",
        ),
        ("postgresql+asyncpg://127.0.0.1:5432/prefect", "postgresql+asyncpg://127.0.0.1:5432/prefect"),
    ],
)
def test_describe_database_hides_the_password(
    url: str, shown: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PREFECT_API_DATABASE_CONNECTION_URL", url)
    assert stack_module.describe_database(tmp_path) == shown
    monkeypatch.delenv("PREFECT_API_DATABASE_CONNECTION_URL")
    assert stack_module.describe_database(tmp_path) == f"SQLite at {tmp_path / 'prefect.db'}"
