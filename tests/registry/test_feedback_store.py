"""The prediction log's and the feedback's tables (mnist_core/registry/feedback.py) on SQLite and on a real
PostgreSQL: rows written in batches, the retention clearing images but keeping rows, a correction stored once, its
image in the content-addressed store, and the tables added to a registry that already exists."""

import hashlib
import importlib.util
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from mnist_core.registry.database import RegistryStore, engine_for
from mnist_core.registry.feedback import FeedbackEntry, FeedbackStore

IMAGE = bytes(range(256)) * 3 + bytes(16)  # 784 bytes


def _row(prediction_id: str, at: str, image: bytes | None = IMAGE) -> dict:
    return {"id": prediction_id, "at": at, "dataset": "mnist", "run_id": "r1", "model_sha256": "a" * 64, "class": 10,
            "confidence": 0.5, "not_a_digit_score": -1.5, "image_sha256": hashlib.sha256(IMAGE).hexdigest(),
            "image": image, "route": "predict"}  # fmt: skip


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str | None]:
    if request.param == "sqlite":
        yield None  # the output root's registry.db
        return
    if importlib.util.find_spec("psycopg") is None:
        pytest.skip("psycopg (the PostgreSQL driver, extra `postgres`) is not installed")
    cluster = request.getfixturevalue("postgres_cluster")
    if cluster.port is None:
        pytest.skip(cluster.why_not)
    url = cluster.create_database(f"feedback_{uuid.uuid4().hex[:8]}").replace("+asyncpg", "+psycopg")
    yield url
    engine_for(url).dispose()


def test_log_retention_and_feedback_stored_once(url: str | None, tmp_path: Path) -> None:
    RegistryStore(tmp_path, url).open()  # a registry that exists before the tables do: they are added
    store = FeedbackStore(tmp_path, url)
    store.log_predictions([_row("old", "2026-01-01T00:00:00Z"), _row("new", "2026-12-07T00:00:00Z")])
    assert store.clear_images("2026-06-01T00:00:00Z") == 1
    old, new = store.prediction("old"), store.prediction("new")
    assert old is not None and old["image"] is None and old["class"] == 10  # the row stays, its image is gone
    assert new is not None and new["image"] == IMAGE and store.prediction("missing") is None
    entry = FeedbackEntry("mnist", 3, "2026-12-07T00:00:01Z", IMAGE, "new", 10, "r1", "a" * 64)
    first, again = store.add(entry), store.add(entry)
    assert first == (again[0], False) and again[1] is True and store.count() == 1
    row = store.one(first[0])
    assert row is not None and store.image(row) == IMAGE
    assert (
        Path(row["image_uri"]) == tmp_path / "artifact-store" / "blobs" / "sha256" / hashlib.sha256(IMAGE).hexdigest()
    )
    other = store.add(FeedbackEntry("mnist", 10, "2026-12-07T00:00:02Z", IMAGE))  # the same image, by itself
    assert other[1] is False and [r["id"] for r in store.feedback("mnist", since="2026-12-07T00:00:02Z")] == [other[0]]
