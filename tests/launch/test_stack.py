"""launch/stack.py without a real Prefect server: its API calls, through Prefect's client, against a scripted
HTTP server on loopback."""

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from launch import stack as stack_module
from launch.stack import Stack


class ScriptedServer:
    """Answers each request with the next status code of `codes` (the last one repeats), and counts requests.
    A retryable answer says `Retry-After: 0`, so the client's retries take no time."""

    def __init__(self, codes: list[int]) -> None:
        self.codes, self.requests = codes, 0
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            def answer(self, ok_body: object) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                code = scripted.codes[min(scripted.requests, len(scripted.codes) - 1)]
                scripted.requests += 1
                body = json.dumps(ok_body if code == 200 else {"exception_message": "busy"}).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                if code in (429, 502, 503):
                    self.send_header("Retry-After", "0")
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
                if self.path.startswith("/api/csrf-token"):  # asked before a POST; 404: a server without CSRF
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.answer(True)  # GET /api/health

            def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
                self.answer([])  # POST /api/work_pools/<pool>/workers/filter: no workers

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]


@pytest.fixture
def scripted(request: pytest.FixtureRequest) -> Iterator[ScriptedServer]:
    from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    server = ScriptedServer(request.param)
    thread = threading.Thread(target=server.server.serve_forever, daemon=True)
    thread.start()
    with temporary_settings({PREFECT_CLIENT_MAX_RETRIES: 3}):
        yield server
    server.server.shutdown()
    server.server.server_close()


def _stack(tmp_path: Path, port: int) -> Stack:
    return Stack(tmp_path / "state", "127.0.0.1", port, "mnist-pool")


@pytest.mark.parametrize("scripted", [[503, 503, 200]], indirect=True)
def test_api_retries_when_the_server_is_busy(scripted: ScriptedServer, tmp_path: Path) -> None:
    with _stack(tmp_path, scripted.port).client() as client:
        assert client.read_workers_for_work_pool("mnist-pool") == []
    assert scripted.requests == 3


@pytest.mark.parametrize("scripted", [[503, 200]], indirect=True)
def test_health_check_asks_once_per_poll(scripted: ScriptedServer, tmp_path: Path) -> None:
    """The stack polls health itself (every 0.25 s until its deadline): one request per poll, no back-off inside."""
    stack = _stack(tmp_path, scripted.port)
    assert not stack.server_healthy() and scripted.requests == 1
    assert stack.server_healthy() and scripted.requests == 2


@pytest.mark.parametrize("scripted", [[503]], indirect=True)
def test_api_gives_up_after_its_retries(scripted: ScriptedServer, tmp_path: Path) -> None:
    with pytest.raises(httpx.HTTPStatusError, match="503"), _stack(tmp_path, scripted.port).client() as client:
        client.read_workers_for_work_pool("mnist-pool")
    assert scripted.requests == 4  # the first try and three retries
    assert not _stack(tmp_path, scripted.port).worker_online()


@pytest.mark.parametrize("scripted", [[500, 200]], indirect=True)
def test_api_does_not_retry_a_server_error(scripted: ScriptedServer, tmp_path: Path) -> None:
    with pytest.raises(httpx.HTTPStatusError, match="500"), _stack(tmp_path, scripted.port).client() as client:
        client.read_workers_for_work_pool("mnist-pool")
    assert scripted.requests == 1


def test_stack_state_is_written_atomically(tmp_path: Path) -> None:
    stack = _stack(tmp_path, 1)
    stack.write_state({"server_pid": 1, "port": 1})
    stack.write_state({"server_pid": 2, "port": 1})
    assert stack.read_state() == {"server_pid": 2, "port": 1}
    assert [p.name for p in stack.state_dir.iterdir()] == ["stack.json"]  # no temp file left beside it


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


def test_a_throwaway_server_never_gets_the_callers_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests and the benchmark start servers of their own: whatever database, profile or API the caller's environment
    names, theirs is SQLite in their own home, run away from the caller's .env and prefect.toml."""
    from launch import server as server_module

    started: dict[str, object] = {}

    def record_and_stop(
        host: str, port: int, env: dict[str, str], log_path: Path, cwd: Path, outlive_caller: bool
    ) -> None:
        started.update(host=host, env=env, cwd=cwd, outlive_caller=outlive_caller)
        raise RuntimeError("stopped by the test")

    monkeypatch.setattr(server_module, "start_server", record_and_stop)
    caller = {"PATH": "/usr/bin", "PREFECT_API_URL": "http://prod:4200/api", "PREFECT_PROFILE": "prod",
              "PREFECT_API_DATABASE_CONNECTION_URL": "postgresql+asyncpg://prod-db/prefect",
              "PREFECT_SERVER_DATABASE_CONNECTION_URL": "postgresql+asyncpg://prod-db/prefect"}  # fmt: skip
    with pytest.raises(RuntimeError, match="stopped by the test"), server_module.running_server(tmp_path, caller):
        pass
    env = started["env"]
    assert isinstance(env, dict) and started["host"] == "127.0.0.1" and started["cwd"] == tmp_path
    assert started["outlive_caller"] is False  # stopped by Linux if the tests are killed
    assert env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] == f"sqlite+aiosqlite:///{tmp_path / 'prefect.db'}"
    assert env["PREFECT_HOME"] == str(tmp_path) and env["PATH"] == "/usr/bin"
    assert not [key for key in env if key.startswith(("PREFECT_API_", "PREFECT_PROFILE"))]


def test_deployments_are_applied_again_when_what_they_are_built_from_changes(tmp_path: Path) -> None:
    """`up` skips `prefect deploy` only while the digest kept in the server's database is the same: any change of
    the code the flows import, of prefect.yaml, of the checkout's path or of the pool means applying again (a new
    database has no digest; tests/e2e/test_deployment.py restarts a server on its database and it is kept)."""
    import shutil

    root = tmp_path / "checkout"
    for package in stack_module.DEPLOYED_CODE:
        shutil.copytree(
            stack_module.PROJECT_ROOT / package, root / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    digest = stack_module.deployment_digest
    before = digest(root, "mnist-pool")
    assert digest(root, "mnist-pool") == before
    assert digest(root, "other-pool") != before
    moved = root.rename(tmp_path / "moved")
    assert digest(moved, "mnist-pool") != before
    root = moved.rename(root)
    for changed in (
        root / "deployments" / "prefect.yaml",
        root / "mnist_core" / "config.py",
        root / "tasks" / "train.py",
    ):
        original = changed.read_bytes()
        changed.write_bytes(original + b"\n# edited\n")
        assert digest(root, "mnist-pool") != before, changed
        changed.write_bytes(original)
    assert digest(root, "mnist-pool") == before
