"""`mnist serve` as its own process on a free loopback port, for the benchmarks and the serving tests (through
tests/support/serving.py). A benchmark run as a script imports it as `serve_process`."""

import argparse
import os
import subprocess
import sys
from pathlib import Path

import httpx
import tenacity

from launch.server import free_port, poll

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def start_server(root: Path, log: Path, *flags: str, token: str | None = None) -> tuple[subprocess.Popen, str]:
    """`mnist serve` on a free loopback port as its own process, its output in `log`; returns once it is live.
    The caller stops it by PID (`stop_server`)."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    env.pop("MNIST_SERVE_TOKEN", None)
    if token:
        env["MNIST_SERVE_TOKEN"] = token
    command = [sys.executable, "-m", "launch.cli", "serve", "--port", str(port), "--output-dir", str(root), *flags]
    return start_live(command, env, log, port, "/v2/health/live")


def start_live(
    command: list[str], env: dict[str, str], log: Path, port: int, health: str
) -> tuple[subprocess.Popen, str]:
    """`command` as its own process, its output in `log`; returns once GET `health` on loopback `port` answers 200
    (the process is stopped again if it never does). The caller stops it by PID (`stop_server`)."""
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert process.poll() is None, log.read_text()
        try:
            return httpx.get(f"{url}{health}", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(up, timeout=30, every=0.1)
    except BaseException:
        stop_server(process)
        raise
    return process, url


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()  # by PID: only the process the caller started
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_until(check, timeout: float = 10.0, every: float = 0.05) -> None:  # noqa: ANN001
    """Poll `check` (launch.server.poll) until it returns something true; AssertionError after `timeout` seconds."""
    try:
        poll(check, timeout, every)
    except tenacity.RetryError:
        raise AssertionError(f"not true within {timeout} s: {check}") from None


def serving_arguments(doc: str | None, seconds: float) -> argparse.ArgumentParser:
    """The flags every serving benchmark takes: the model, a phase's length, where to write the figures."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--onnx", type=Path, required=True, help="a model.onnx (e.g. a run folder's)")
    parser.add_argument("--seconds", type=float, default=seconds, help="length of each measured phase")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    return parser
