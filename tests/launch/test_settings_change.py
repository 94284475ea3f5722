"""`mnist stack up` notices settings that changed since its worker or server started (issue 32): what it records
is a digest per setting (never a value), and the names that differ are what it says when it restarts one."""

from pathlib import Path

import pytest

from launch.stack import changed_settings, server_settings, worker_settings
from mnist_core.settings import VARIABLES


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [*VARIABLES, "MNIST_SETTINGS", "PREFECT_API_DATABASE_CONNECTION_URL"]:
        monkeypatch.delenv(name, raising=False)


def test_a_changed_registry_or_store_is_named_and_no_secret_is_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MNIST_REGISTRY_URL", "postgresql+psycopg://u:hunter2@db/r")
    before = worker_settings()
    assert "hunter2" not in repr(before) and changed_settings(before, worker_settings()) == []
    monkeypatch.setenv("MNIST_REGISTRY_URL", "postgresql+psycopg://u:hunter2@other/r")
    monkeypatch.setenv("MNIST_ARTIFACT_STORE", "s3://bucket/models")
    monkeypatch.setenv("MNIST_SERVE_PORT", "8123")  # the model server's: not the worker's business
    assert changed_settings(before, worker_settings()) == ["MNIST_ARTIFACT_STORE", "MNIST_REGISTRY_URL"]


def test_a_settings_file_change_is_noticed_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file = tmp_path / "settings.env"
    file.write_text("MNIST_ARTIFACT_STORE=s3://a/models\n")
    monkeypatch.setenv("MNIST_SETTINGS", str(file))
    before = worker_settings()
    file.write_text("MNIST_ARTIFACT_STORE=s3://b/models\n")
    assert changed_settings(before, worker_settings()) == ["MNIST_ARTIFACT_STORE"]


def test_a_process_started_before_settings_were_recorded_is_kept(tmp_path: Path) -> None:
    assert changed_settings(None, worker_settings()) == []
    assert changed_settings({}, server_settings(tmp_path)) == []


def test_the_server_follows_its_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = server_settings(tmp_path)
    monkeypatch.setenv("PREFECT_API_DATABASE_CONNECTION_URL", "postgresql+asyncpg://p:pw@db/prefect")
    assert changed_settings(before, server_settings(tmp_path)) == ["PREFECT_API_DATABASE_CONNECTION_URL"]
