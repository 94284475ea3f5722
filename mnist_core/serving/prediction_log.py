"""The prediction log, written off the request path: a request hands its batch of predictions over (one lock, a
list append: microseconds) and a background thread writes what has gathered, in one transaction, every
`log_flush_seconds`. The queue is bounded (`log_queue` predictions), which bounds the log's rate (and its share of
the CPU, which it takes from the requests) to `log_queue` per `log_flush_seconds`: beyond that rate (a stream of
large v2 batches), or when the database is slow or down, what does not fit is dropped and counted
(`mnist_serve_predictions_dropped_total`), a failed write's batch too, with one log line when an outage starts and
one when it ends: a request is never failed nor made to wait by the log.

The last `recent_predictions` are also kept in memory, so feedback on a prediction made a moment ago finds it before
it is written. Ids are a random prefix per process and a counter (unique across processes and restarts, and cheaper
than a uuid4 per image on a 1,024-image v2 batch); a batch's ids are consecutive, so the memory keeps batches, not
one entry per image (a 256-image request costs one append, not 256 dictionary entries).
"""

import hashlib
import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from itertools import count
from typing import Any

import numpy as np

from mnist_core.errors import PipelineError
from mnist_core.registry.feedback import FeedbackStore

LOG = logging.getLogger("mnist.serve")
RETENTION_EVERY_S = 3600.0  # how often old images are cleared; the retention is in days


@dataclass(frozen=True)
class Batch:
    """The predictions of one request, as the request made them (arrays, not rows: rows are built off the path)."""

    ids: list[str]
    first: int  # the counter of ids[0]; the others follow it
    at: str
    dataset: str
    run_id: str | None
    model_sha256: str
    classes: np.ndarray  # 0-10
    confidences: np.ndarray
    scores: np.ndarray
    images: np.ndarray  # N x 28 x 28 uint8, as the model saw them
    route: str

    def row(self, index: int, with_image: bool = True) -> dict[str, Any]:
        image = self.images[index].tobytes()
        return {
            "id": self.ids[index],
            "at": self.at,
            "dataset": self.dataset,
            "run_id": self.run_id,
            "model_sha256": self.model_sha256,
            "class": int(self.classes[index]),
            "confidence": float(self.confidences[index]),
            "not_a_digit_score": float(self.scores[index]),
            "image_sha256": hashlib.sha256(image).hexdigest(),
            "image": image if with_image else None,
            "route": self.route,
        }


class PredictionLog:
    """Ids for predictions, the recent ones in memory, and the thread that writes them to `store`."""

    def __init__(
        self,
        store: Callable[[], FeedbackStore],
        queue_size: int,
        flush_seconds: float,
        retention_days: float,
        recent: int,
    ) -> None:
        self._store_factory, self._store = store, None
        self.queue_size, self.flush_seconds, self.retention_days = queue_size, flush_seconds, retention_days
        self._prefix, self._counter = secrets.token_hex(6), count()
        self._lock = threading.Lock()
        self._pending: list[Batch] = []
        self._pending_count = 0
        self._recent: deque[Batch] = deque()
        self._recent_count = 0
        self._recent_size = recent
        self.logged = 0
        self.dropped = 0
        self._down: str | None = None  # the outage's first error, while the database is down
        self._dropped_in_outage = 0
        self._next_retention = 0.0
        self._stop = threading.Event()
        self._wake = threading.Event()  # set by stop(): the last write need not wait for the tick
        self._thread: threading.Thread | None = None

    def new_ids(self, n: int) -> tuple[int, list[str]]:
        """The counter of the first, and `n` consecutive new ids."""
        with self._lock:  # requests run on the event loop and in the thread pool
            first = next(self._counter)
            for _ in range(n - 1):
                next(self._counter)
        return first, [f"{self._prefix}-{index:x}" for index in range(first, first + n)]

    def record(self, batch: Batch) -> None:
        """Hand a request's predictions over (the request path: no I/O, no hashing)."""
        n = len(batch.ids)
        with self._lock:
            self._recent.append(batch)
            self._recent_count += n
            while self._recent_count - len(self._recent[0].ids) >= self._recent_size:
                self._recent_count -= len(self._recent.popleft().ids)
            if self._pending_count + n > self.queue_size:
                self.dropped += n
                self._dropped_in_outage += n
                return
            self._pending.append(batch)
            self._pending_count += n

    def recent(self, prediction_id: str) -> dict[str, Any] | None:
        """A prediction made a moment ago, as its log row (image included), if still in memory."""
        prefix, _, counter = prediction_id.rpartition("-")
        if prefix != self._prefix or not counter.isalnum():
            return None
        try:
            number = int(counter, 16)
        except ValueError:
            return None
        with self._lock:
            batches = list(self._recent)
        for batch in reversed(batches):  # feedback is mostly about the latest predictions
            if batch.first <= number < batch.first + len(batch.ids):
                return batch.row(number - batch.first)
        return None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="mnist-serve-prediction-log", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Write what is pending (one last try), then stop."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            self.flush()
        self.flush()

    def flush(self) -> None:
        with self._lock:
            batches, self._pending, self._pending_count = self._pending, [], 0
        rows = [batch.row(index) for batch in batches for index in range(len(batch.ids))]
        try:
            store = self._store or self._store_factory()
            self._store = store
            store.log_predictions(rows)
            self._retain(store)
        except (PipelineError, OSError) as error:
            self._failed(len(rows), error)
            return
        if not rows:  # nothing was written: it says nothing about whether the database is back
            return
        self.logged += len(rows)
        if self._down is not None:
            LOG.warning("mnist serve: the prediction log is written again (%d predictions dropped while the database "
                        "was down)", self._dropped_in_outage)  # fmt: skip
            self._down = None
        self._dropped_in_outage = 0

    def _failed(self, lost: int, error: Exception) -> None:
        with self._lock:
            self.dropped += lost
            self._dropped_in_outage += lost
        if self._down is None:  # one line per outage, not one per flush
            self._down = str(error)
            LOG.warning("mnist serve: the prediction log cannot be written (%s); predictions are served and "
                        "counted as dropped until it can", error)  # fmt: skip

    def _retain(self, store: FeedbackStore) -> None:
        now = time.time()
        if now < self._next_retention:
            return
        cutoff = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - self.retention_days * 86400))
        cleared = store.clear_images(cutoff)
        self._next_retention = now + RETENTION_EVERY_S  # after it worked: a database down is retried next flush
        if cleared:
            LOG.info("mnist serve: cleared the images of %d predictions older than %g days", cleared,
                     self.retention_days)  # fmt: skip
