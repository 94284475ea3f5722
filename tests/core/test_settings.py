"""mnist_core/settings.py: one model for every setting, from the environment and a settings file, with where each
value came from and secrets redacted; docs/settings.md generated from it. Cheap: no torch, no server."""

import importlib.util
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from mnist_core.settings import VARIABLES, SettingsError, current, export_file, load, shown, write_file

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [*VARIABLES, "MNIST_SETTINGS"]:
        monkeypatch.delenv(name, raising=False)


def test_environment_wins_over_the_file_which_wins_over_defaults(tmp_path: Path) -> None:
    file = tmp_path / "settings.env"
    file.write_text("# a comment\nMNIST_SERVE_PORT=9001\nexport MNIST_WORKER_LIMIT='2'\nMNIST_STACK_PORT=4300\n")
    settings, sources = load(file, {"MNIST_STACK_PORT": "4400"})
    assert (settings.serve_port, settings.worker_limit, settings.stack_port) == (9001, 2, 4400)
    assert (sources["serve_port"], sources["stack_port"], sources["stack_host"]) == ("file", "environment", "default")


def test_a_bad_file_or_value_is_one_line_naming_it(tmp_path: Path) -> None:
    file = tmp_path / "settings.env"
    file.write_text("MNIST_SERVE_PROT=9001\n")
    with pytest.raises(SettingsError, match="unknown setting MNIST_SERVE_PROT"):
        load(file, {})
    with pytest.raises(SettingsError, match="not found"):
        load(tmp_path / "missing.env", {})
    file.write_text("MNIST_WORKER_LIMIT=0\n")
    with pytest.raises(SettingsError, match=r"MNIST_WORKER_LIMIT='0' \(from settings file .*\): .*greater than"):
        load(file, {})


def test_secrets_are_redacted_when_shown(tmp_path: Path) -> None:
    settings, _ = load(None, {"MNIST_REGISTRY_URL": "postgresql+psycopg://u:hunter2@db:5432/r",
                              "AWS_SECRET_ACCESS_KEY": "hunter2", "MNIST_SERVE_TOKEN": "hunter2"})  # fmt: skip
    assert settings.secret("registry_url") == "postgresql+psycopg://u:hunter2@db:5432/r"
    printed = [shown(settings, field) for field in settings.model_fields]
    assert "hunter2" not in " ".join(printed) and "hunter2" not in repr(settings)
    assert "postgresql+psycopg://***@db:5432/r" in printed


def test_written_file_is_0600_and_reads_back(tmp_path: Path) -> None:
    file = tmp_path / "s" / "settings.env"
    write_file(file, {"MNIST_REGISTRY_URL": "postgresql+psycopg://u:p'w@h/db", "AWS_ALLOW_HTTP": "true"}, "made here")
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    settings, _ = load(file, {})
    assert settings.secret("registry_url") == "postgresql+psycopg://u:p'w@h/db" and settings.aws_allow_http


def test_export_puts_the_file_into_the_environment_but_never_over_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = tmp_path / "settings.env"
    file.write_text("MNIST_ARTIFACT_STORE=s3://b/p\nMNIST_WORKER_NAME=from-file\n")
    monkeypatch.setenv("MNIST_WORKER_NAME", "from-env")
    for name in ("MNIST_ARTIFACT_STORE", "MNIST_SETTINGS"):  # empty is unset; monkeypatch restores what export sets
        monkeypatch.setenv(name, "")
    export_file(file)
    assert os.environ["MNIST_ARTIFACT_STORE"] == "s3://b/p" and os.environ["MNIST_WORKER_NAME"] == "from-env"
    assert os.environ["MNIST_SETTINGS"] == str(file.resolve())
    settings, sources = load()
    assert settings.artifact_store == "s3://b/p" and sources["artifact_store"] == "file"
    assert sources["worker_name"] == "environment" and current().worker_name == "from-env"


def test_mnist_settings_prints_values_sources_and_no_secret(tmp_path: Path) -> None:
    file = tmp_path / "settings.env"
    file.write_text("MNIST_REGISTRY_URL=postgresql+psycopg://u:hunter2@db/r\nAWS_SECRET_ACCESS_KEY=hunter2\n")
    env = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    result = subprocess.run([sys.executable, "-m", "launch.cli", "--settings", str(file), "settings", "--json"],
                            cwd=PROJECT_ROOT, env={**env, "MNIST_SERVE_PORT": "8123"}, capture_output=True,
                            text=True, check=True)  # fmt: skip
    assert "hunter2" not in result.stdout + result.stderr
    rows = {row["name"]: row for row in map(json.loads, result.stdout.splitlines())}
    assert rows["MNIST_REGISTRY_URL"] == {"name": "MNIST_REGISTRY_URL", "value": "postgresql+psycopg://***@db/r",
                                          "source": "file"}  # fmt: skip
    assert rows["MNIST_SERVE_PORT"]["source"] == "environment" and rows["MNIST_STACK_PORT"]["source"] == "default"
    bad = subprocess.run([sys.executable, "-m", "launch.cli", "--settings", str(tmp_path / "no.env"), "settings"],
                         cwd=PROJECT_ROOT, env=env, capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "no.env" in bad.stderr


def test_settings_page_is_generated_from_the_model() -> None:
    spec = importlib.util.spec_from_file_location("gen_settings", PROJECT_ROOT / "docs" / "gen_settings.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    page = (PROJECT_ROOT / "docs" / "settings.md").read_text()
    assert page == module.render(), "docs/settings.md is stale: run `python docs/gen_settings.py`"
    for name in VARIABLES:
        assert f"| `{name}` |" in page
