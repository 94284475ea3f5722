"""launch/server.py: how the project starts Prefect's own processes."""

import subprocess
import sys
from pathlib import Path

import prefect
import pytest

from launch.server import prefect_command


def test_prefect_is_the_one_this_python_imports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Beside this Python (a venv), its `prefect`; elsewhere `python -m prefect` (Prefect installed with `pip
    --target`, as on the GPU machine, has no `prefect` on PATH: that used to fail with "No such file or directory:
    'prefect'"), never whichever `prefect` PATH happens to hold."""
    beside = Path(sys.executable).parent / "prefect"
    assert prefect_command() == ([str(beside)] if beside.exists() else [sys.executable, "-m", "prefect"])
    python = sys.executable
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python3"))
    assert prefect_command() == [str(tmp_path / "python3"), "-m", "prefect"]
    done = subprocess.run([python, "-m", "prefect", "version"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and prefect.__version__ in done.stdout, done.stderr[-2000:]


def test_a_started_prefect_process_gets_ctrl_c_back_when_the_caller_ignores_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Prefect worker stops on SIGTERM by sending itself SIGINT. Started by a caller that ignores SIGINT (a
    script's background job, nohup, a CI runner), it inherited that and never stopped until SIGKILLed."""
    import signal

    from launch import server

    probe = "import signal; print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)"
    monkeypatch.setattr(server, "prefect_command", lambda: [sys.executable, "-c", probe])
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        process = server.start_prefect([], {}, tmp_path / "probe.log")
        process.wait(timeout=60)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert (tmp_path / "probe.log").read_text().strip() == "True"
