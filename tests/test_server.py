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
