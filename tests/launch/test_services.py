"""`mnist services` where nothing needs to start: a port someone else holds, `status` when the services are down
and something else answers on their ports, a Ctrl-C. Starting and stopping them for real is
tests/e2e/test_two_machines.py's (found by a new user's try: each of these misled or printed a traceback)."""

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from launch import services as services_module
from launch import stack as stack_module
from launch.services import Services
from tests.support.seaweedfs import distinct_free_ports


@pytest.fixture
def something_else() -> Iterator[int]:
    """An HTTP server that is not SeaweedFS (any path answers 200) on a loopback port: its port."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _args(folder: Path, s3_port: int) -> list[str]:
    pg, prefect = distinct_free_ports(2)
    return ["--dir", str(folder), "--host", "127.0.0.1", "--pg-port", str(pg), "--s3-port", str(s3_port),
            "--prefect-port", str(prefect)]  # fmt: skip


def test_up_refuses_a_taken_port_before_starting_anything(
    tmp_path: Path, something_else: int, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "services"
    with pytest.raises(SystemExit) as refused:
        services_module.main(["up", *_args(folder, something_else)])
    assert str(refused.value) == f"services: something already listens on 127.0.0.1:{something_else}; pick --s3-port"
    state = json.loads((folder / "services.json").read_text()) if (folder / "services.json").exists() else {}
    assert not [key for key in state if key.endswith("_pid")], state  # PostgreSQL was not started first
    assert not (folder / "postgres").exists()


def test_status_does_not_take_something_else_for_the_services(
    tmp_path: Path, something_else: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """The services down (PIDs recorded but gone), another server on the S3 port: not running, status 1."""
    folder = tmp_path / "services"
    args = _args(folder, something_else)
    ports = {"postgres": int(args[5]), "s3": something_else, "prefect": int(args[9])}
    gone = 2**22 + 1  # above the default pid_max: no process has it
    Services(folder, "127.0.0.1", "127.0.0.1", ports).save(
        {"ports": ports, "advertise": "127.0.0.1", "postgres_pid": gone, "weed_pid": gone, "prefect_pid": gone}
    )
    assert services_module.main(["status", *args]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"{role}: not running (PID {gone})" for role in ("postgres", "seaweedfs", "prefect")], lines


@pytest.mark.parametrize(
    ("module", "argv", "words"),
    [
        (services_module, ["up", "--dir", "{tmp}"], "`mnist services down --dir {tmp}` stops it"),
        (stack_module, ["up", "--state-dir", "{tmp}"], "`mnist stack --state-dir {tmp} down` stops it"),
    ],
)
def test_ctrl_c_during_up_is_one_line_saying_what_keeps_running(
    module, argv: list[str], words: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """A Ctrl-C while `up` waits for a server (the servers run in sessions of their own, so they keep running)."""

    def interrupted(self: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(Services if module is services_module else stack_module.Stack, "up", interrupted)
    assert module.main([part.format(tmp=tmp_path) for part in argv]) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1 and "interrupted (Ctrl-C)" in err
    assert words.format(tmp=tmp_path) in err, err
