"""`make setup`'s installer: the project and its packages into a virtual environment, with uv where it can be had.

uv installs the same packages as pip in about half the time: torch's CUDA wheels alone unpack to ~3 GB, which uv
writes in parallel (fresh-clone CI on the 2-core AMD EPYC: installs 40-56 s with uv, 114 s with pip; the test
times in docs/development.md). uv does not read pip's configuration, and this machine's (a local wheel folder, local
indexes, a constraints file capping torch) decides where torch comes from, so it is read from `pip config list` and
passed on. If uv cannot be installed or fails, pip installs as before. Standard library only: it runs before
anything is installed.

    python3 launch/install.py .venv '.[test]'
"""

import ast
import os
import shlex
import subprocess
import sys
from pathlib import Path

# pip's settings that choose what is installed, and uv's flags for them (uv has no configuration file of pip's).
LIST_OPTIONS = {"find-links": "--find-links", "extra-index-url": "--extra-index-url", "constraint": "--constraint"}
ONE_VALUE_OPTIONS = {"index-url": "--index-url"}
SECTIONS = ("global", "install", ":env:")  # later sections win, as in pip


def pip_settings(pip: Path) -> dict[str, str]:
    """pip's effective settings (files and PIP_* variables), from `pip config list`: `section.key='value'`."""
    listed = subprocess.run([str(pip), "config", "list"], capture_output=True, text=True, check=False).stdout
    found: dict[tuple[str, str], str] = {}
    for line in listed.splitlines():
        name, _, value = line.partition("=")
        section, _, key = name.rpartition(".")
        if section in SECTIONS and value:
            found[(section, key)] = ast.literal_eval(value)
    settings: dict[str, str] = {}
    for section in SECTIONS:
        settings.update({key: value for (where, key), value in found.items() if where == section})
    return settings


def uv_arguments(settings: dict[str, str]) -> list[str]:
    arguments = ["--index-strategy", "unsafe-best-match"]  # pip's own: the best version across every index
    for key, flag in LIST_OPTIONS.items():
        for value in settings.get(key, "").split():
            arguments += [flag, value]
    for key, flag in ONE_VALUE_OPTIONS.items():
        if settings.get(key):
            arguments += [flag, settings[key]]
    if settings.get("no-index", "").lower() in {"1", "true", "yes", "on"}:
        arguments.append("--no-index")
    return arguments


def uv_environment(settings: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    if settings.get("cert"):
        env.setdefault("SSL_CERT_FILE", settings["cert"])
    if settings.get("timeout"):
        env.setdefault("UV_HTTP_TIMEOUT", settings["timeout"])
    return env


def install(venv: Path, requirement: str) -> int:
    pip, python = venv / "bin" / "pip", venv / "bin" / "python"
    pip_install = [str(pip), "install", "--progress-bar", "off", "-e", requirement]
    got_uv = subprocess.run([str(pip), "install", "--quiet", "--progress-bar", "off", "uv"], check=False)
    if got_uv.returncode == 0:
        settings = pip_settings(pip)
        command = [str(venv / "bin" / "uv"), "pip", "install", "--python", str(python), *uv_arguments(settings)]
        # As pip does: where PYTHONDONTWRITEBYTECODE is set (this machine), nothing is compiled later, and each
        # process would compile torch's and Prefect's modules again (`import torch, prefect`: 2.7 s, uncompiled 5.2 s).
        command += ["--compile-bytecode", "-e", requirement]
        print("+", shlex.join(command), flush=True)
        if subprocess.run(command, env=uv_environment(settings), check=False).returncode == 0:
            return 0
        print("setup: uv could not install the packages; pip installs them instead", flush=True)
    else:
        print("setup: uv could not be installed; pip installs the packages instead", flush=True)
    print("+", shlex.join(pip_install), flush=True)
    return subprocess.run(pip_install, check=False).returncode


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python3 launch/install.py VENV REQUIREMENT   (e.g. .venv '.[test]')")
    sys.exit(install(Path(sys.argv[1]), sys.argv[2]))
