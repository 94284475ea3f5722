"""The prediction log and the feedback on predictions, in the registry's database (the same SQLite file or
PostgreSQL database as the runs: `registry_url`), and the corrected images in the artifact store.

Tables (docs/serving.md):
- `predictions`: one row per served prediction: id, time, model run id and SHA-256, class (0-10, 10 = "not a
  digit"), confidence, not-a-digit score, the prepared 28x28 image's SHA-256, and the image itself (784 bytes)
  until the retention clears it (the row stays).
- `feedback`: one row per correction (or confirmation): the label a person gave, the prediction it is about (or
  none, for an image sent only as feedback), the prepared image's SHA-256 and its URI in the artifact store.
  `key` makes the same correction twice one row: SHA-256 of "prediction:<id>:<label>" or "image:<image
  SHA-256>:<label>".

They are added beside the registry's own tables (SQLAlchemy `create_all`, which creates only what is missing,
under the registry's write lock), not as a schema version: code that predates them ignores them, so no database
is refused by an older checkout for holding them.
"""

import hashlib
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from mnist_core.errors import StorageError
from mnist_core.registry.artifacts import BLOBS, ArtifactStore, configured_store, local_folder
from mnist_core.registry.database import RegistryStore, _storage_error

IMAGE_BYTES = 28 * 28
# Where corrected images go when no MNIST_ARTIFACT_STORE is set: a content-addressed folder store in the output root.
LOCAL_STORE_DIR = "artifact-store"

metadata = MetaData()
predictions = Table(
    "predictions",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("at", String(32), nullable=False, index=True),  # UTC ISO: sorts as time, so the retention is a compare
    Column("dataset", Text, nullable=False),
    Column("run_id", Text),  # None: a model file outside any run folder
    Column("model_sha256", String(64), nullable=False),
    Column("class", Integer, nullable=False),  # 0-9, or 10: "not a digit"
    Column("confidence", Float, nullable=False),  # of the best of the dataset's classes
    Column("not_a_digit_score", Float, nullable=False),
    Column("image_sha256", String(64), nullable=False),
    Column("image", LargeBinary),  # the prepared 28x28 uint8 image, row by row; None after the retention
    Column("route", String(16), nullable=False),  # predict or v2
)
feedback = Table(
    "feedback",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("key", String(64), nullable=False, unique=True),  # the same correction twice is one row
    Column("at", String(32), nullable=False, index=True),
    Column("dataset", Text, nullable=False),
    Column("label", Integer, nullable=False),  # 0-9, or 10: "not a digit"
    Column("prediction_id", String(40)),  # None: an image sent only as feedback
    Column("predicted_class", Integer),
    Column("run_id", Text),  # the model that made the prediction, when there was one
    Column("model_sha256", String(64)),
    Column("image_sha256", String(64)),
    Column("image_uri", Text),  # the prepared image in the artifact store (None: the log had cleared it)
)


# Which corrections each run trained on (`trained`) and scored on (`held_back`): a correction no run has trained on is
# pending, and `mnist.feedback.ready` is announced when N are (serving/announce.py).
corrections_used = Table(
    "corrections_used",
    metadata,
    Column("run_id", String(64), primary_key=True),
    Column("feedback_id", Integer, primary_key=True),
    Column("role", String(16), nullable=False),  # trained or held_back
)
# One row per announcement of pending corrections, keyed by the newest correction it counted: the claim (an insert
# the key makes unique) lets one process of many announce it, once; a failed send gives the claim back.
announcements = Table(
    "feedback_announcements",
    metadata,
    Column("dataset", String(32), primary_key=True),
    Column("up_to_id", Integer, primary_key=True),
    Column("claimed_at", String(32), nullable=False),
    Column("sent_at", String(32)),
)


@dataclass(frozen=True)
class FeedbackEntry:
    """A correction to record: `label` for the prediction `prediction_id`, or for `image` sent on its own."""

    dataset: str
    label: int
    at: str
    image: bytes | None  # the prepared 28x28 image (784 bytes), if known
    prediction_id: str | None = None
    predicted_class: int | None = None
    run_id: str | None = None
    model_sha256: str | None = None

    @property
    def image_sha256(self) -> str | None:
        return hashlib.sha256(self.image).hexdigest() if self.image is not None else None

    @property
    def key(self) -> str:
        about = f"prediction:{self.prediction_id}" if self.prediction_id else f"image:{self.image_sha256}"
        return hashlib.sha256(f"{about}:{self.label}".encode()).hexdigest()


_ready: set[tuple[str, int]] = set()


class FeedbackStore:
    """The prediction log and the feedback of an output root's registry. Every method raises StorageError (one line,
    the password hidden) when the database cannot be used."""

    def __init__(self, output_root: Path, url: str | None = None, image_store: ArtifactStore | None = None) -> None:
        self.registry = RegistryStore(output_root, url)
        self.root = self.registry.root
        self._image_store = image_store

    @property
    def image_store(self) -> ArtifactStore:
        """MNIST_ARTIFACT_STORE (S3 or a folder) when set, else `<output root>/artifact-store/` (made on first use)."""
        if self._image_store is None:
            self._image_store = configured_store() or ArtifactStore(str(self.root / LOCAL_STORE_DIR))
        return self._image_store

    @contextmanager
    def _connection(self, write: bool = False) -> Iterator[Connection]:
        self._ensure()
        try:
            with self.registry.engine.connect() as connection:
                if write:
                    connection.execution_options(registry_write=True)  # SQLite: BEGIN IMMEDIATE, wait our turn
                with connection.begin():
                    yield connection
        except SQLAlchemyError as error:
            raise _storage_error(self.registry.url, error) from error

    def _ensure(self) -> None:
        """The registry's schema, then these tables if missing: once per process and database."""
        key = (self.registry.url_text, os.getpid())
        if key in _ready:
            return
        self.registry.open()
        with self.registry.errors(), self.registry._writing() as connection:
            metadata.create_all(connection)
        _ready.add(key)

    def log_predictions(self, rows: Sequence[dict[str, Any]]) -> None:
        """Insert prediction rows (the `predictions` columns) in one transaction, as the driver's own executemany of a
        statement compiled once: half the CPU of SQLAlchemy's per-row parameter processing (3.9 against 7-14 ms for
        256 rows on SQLite), which the server's writer thread takes from the cores the requests run on."""
        if not rows:
            return
        with self._connection() as connection:
            compiled = insert(predictions).compile(dialect=connection.dialect)
            names = compiled.positiontup  # positional styles (SQLite's qmark): the columns' order; else named
            parameters = [tuple(row[name] for name in names) for row in rows] if names else list(rows)
            connection.exec_driver_sql(str(compiled), parameters)

    def clear_images(self, before: str) -> int:
        """The retention: images of predictions made before `before` (UTC ISO) are cleared; the rows stay."""
        with self._connection() as connection:
            old = (predictions.c.at < before) & predictions.c.image.is_not(None)
            statement = update(predictions).where(old).values(image=None)
            return connection.execute(statement).rowcount or 0

    def prediction(self, prediction_id: str) -> dict[str, Any] | None:
        with self._connection() as connection:
            row = connection.execute(select(predictions).where(predictions.c.id == prediction_id)).mappings().first()
        return dict(row) if row else None

    def add(self, entry: FeedbackEntry) -> tuple[int, bool]:
        """Record `entry` (its image into the artifact store first: the row names it only once it is there);
        (feedback id, whether it was already recorded)."""
        existing = self._id_of(entry.key)
        if existing is not None:
            return existing, True
        uri = self.image_store.put_bytes(entry.image) if entry.image is not None else None
        values = {
            "key": entry.key,
            "at": entry.at,
            "dataset": entry.dataset,
            "label": entry.label,
            "prediction_id": entry.prediction_id,
            "predicted_class": entry.predicted_class,
            "run_id": entry.run_id,
            "model_sha256": entry.model_sha256,
            "image_sha256": entry.image_sha256,
            "image_uri": uri,
        }
        try:
            with self._connection(write=True) as connection:
                return int(connection.execute(insert(feedback).values(**values)).inserted_primary_key[0]), False
        except StorageError as error:
            if not isinstance(error.__cause__, IntegrityError):
                raise
        found = self._id_of(entry.key)  # another request recorded the same correction between our look and insert
        if found is None:
            raise StorageError(f"feedback {entry.key[:16]}…: neither stored nor found in the registry database")
        return found, True

    def _id_of(self, key: str) -> int | None:
        with self._connection() as connection:
            return connection.execute(select(feedback.c.id).where(feedback.c.key == key)).scalar()

    def feedback(self, dataset: str | None = None, since: str | None = None) -> list[dict[str, Any]]:
        """Every recorded correction, oldest first (of `dataset`, at or after `since`)."""
        statement = select(feedback).order_by(feedback.c.id)
        if dataset is not None:
            statement = statement.where(feedback.c.dataset == dataset)
        if since is not None:
            statement = statement.where(feedback.c.at >= since)
        with self._connection() as connection:
            return [dict(row) for row in connection.execute(statement).mappings()]

    def one(self, feedback_id: int) -> dict[str, Any] | None:
        with self._connection() as connection:
            row = connection.execute(select(feedback).where(feedback.c.id == feedback_id)).mappings().first()
        return dict(row) if row else None

    def count(self) -> int:
        with self._connection() as connection:
            return int(connection.execute(select(func.count()).select_from(feedback)).scalar() or 0)

    def image(self, row: dict[str, Any]) -> bytes | None:
        """A feedback row's prepared image, from the artifact store (checked against its SHA-256)."""
        uri, sha256 = row.get("image_uri"), row.get("image_sha256")
        if not uri or not sha256:
            return None
        store_url = uri.rsplit(f"/{BLOBS}/", 1)[0]  # the store it went to, which may not be today's
        if store_url == self.image_store.url.rstrip("/"):
            return self.image_store.get_bytes(sha256)
        folder = local_folder(store_url)
        if folder is not None and not folder.is_dir():
            return None  # a store folder that is not there: the image is gone (reading never creates one)
        return ArtifactStore(store_url).get_bytes(sha256)

    def pending(self, dataset: str) -> list[int]:
        """Ids of `dataset`'s corrections that no run has trained on, oldest first."""
        trained = select(corrections_used.c.feedback_id).where(corrections_used.c.role == "trained")
        statement = (
            select(feedback.c.id)
            .where((feedback.c.dataset == dataset) & feedback.c.id.not_in(trained))
            .order_by(feedback.c.id)
        )
        with self._connection() as connection:
            return [int(value) for value in connection.execute(statement).scalars()]

    def record_corrections(self, run_id: str, trained: Sequence[int], held_back: Sequence[int]) -> None:
        """That `run_id` trained on `trained` and scored on `held_back` (again: nothing new)."""
        rows = [{"run_id": run_id, "feedback_id": int(i), "role": "trained"} for i in trained]
        rows += [{"run_id": run_id, "feedback_id": int(i), "role": "held_back"} for i in held_back]
        if not rows:
            return
        with self._connection(write=True) as connection:
            known = select(corrections_used.c.feedback_id).where(corrections_used.c.run_id == run_id)
            already = {int(value) for value in connection.execute(known).scalars()}
            fresh = [row for row in rows if row["feedback_id"] not in already]
            if fresh:
                connection.execute(insert(corrections_used), fresh)

    def corrections_of(self, run_id: str) -> dict[str, list[int]]:
        """The corrections `run_id` trained on and held back: {"trained": [...], "held_back": [...]}."""
        statement = select(corrections_used).where(corrections_used.c.run_id == run_id)
        found: dict[str, list[int]] = {"trained": [], "held_back": []}
        with self._connection() as connection:
            for row in connection.execute(statement).mappings():
                found[row["role"]].append(int(row["feedback_id"]))
        return {role: sorted(ids) for role, ids in found.items()}

    def claim_announcement(self, dataset: str, up_to_id: int, at: str) -> bool:
        """True for the one caller that may announce the corrections up to `up_to_id`; False if it is taken."""
        try:
            with self._connection(write=True) as connection:
                values = {"dataset": dataset, "up_to_id": up_to_id, "claimed_at": at}
                connection.execute(insert(announcements).values(**values))
            return True
        except StorageError as error:
            if isinstance(error.__cause__, IntegrityError):
                return False
            raise

    def announcement_sent(self, dataset: str, up_to_id: int, at: str | None) -> None:
        """Mark the claim sent (`at`), or give it back (`at` None: the send failed, so it may be tried again)."""
        key = (announcements.c.dataset == dataset) & (announcements.c.up_to_id == up_to_id)
        with self._connection(write=True) as connection:
            if at is None:
                connection.execute(announcements.delete().where(key))
            else:
                connection.execute(update(announcements).where(key).values(sent_at=at))

    def announced_up_to(self, dataset: str) -> int:
        """The newest correction counted by an announcement (sent or being sent); 0 if none."""
        statement = select(func.max(announcements.c.up_to_id)).where(announcements.c.dataset == dataset)
        with self._connection() as connection:
            return int(connection.execute(statement).scalar() or 0)
