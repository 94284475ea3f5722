"""launch/install.py: pip's settings, read from the real `pip config list`, become the same choices for uv."""

import os
import sys
from pathlib import Path

import pytest

from launch.install import pip_settings, uv_arguments, uv_environment

PIP = Path(sys.executable).parent / "pip"


def test_pips_files_and_variables_reach_uv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "pip.conf"
    config.write_text(
        "[global]\nfind-links = /wheels\nextra-index-url = file:///a/simple file:///b/simple\n"
        "constraint = /caps.txt\ncert = /certs.pem\n[install]\nindex-url = https://mirror.example/simple\n"
    )
    for name in [name for name in os.environ if name.startswith("PIP_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("PIP_CONFIG_FILE", str(config))
    monkeypatch.setenv("PIP_TIMEOUT", "90")  # a variable wins over the files, as in pip
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)  # one already set is kept
    monkeypatch.delenv("UV_HTTP_TIMEOUT", raising=False)
    settings = pip_settings(PIP)
    assert settings["timeout"] == "90" and settings["index-url"] == "https://mirror.example/simple"
    arguments = uv_arguments(settings)
    pairs = list(zip(arguments[::2], arguments[1::2], strict=True))
    assert pairs == [
        ("--index-strategy", "unsafe-best-match"),
        ("--find-links", "/wheels"),
        ("--extra-index-url", "file:///a/simple"),
        ("--extra-index-url", "file:///b/simple"),
        ("--constraint", "/caps.txt"),
        ("--index-url", "https://mirror.example/simple"),
    ]
    env = uv_environment(settings)
    assert env["SSL_CERT_FILE"] == "/certs.pem" and env["UV_HTTP_TIMEOUT"] == "90"


def test_no_settings_means_uvs_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in os.environ if name.startswith("PIP_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # pip's documented way to load no file
    assert uv_arguments(pip_settings(PIP)) == ["--index-strategy", "unsafe-best-match"]
