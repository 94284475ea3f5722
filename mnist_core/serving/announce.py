"""`mnist.feedback.ready`: when the corrections no run has trained on reach `feedback_retrain_after`, the server
announces it to Prefect once, as an event; the `mnist/train` deployment's trigger (deployments/prefect.yaml) starts
the retraining. Prefect's own automations decide what runs: this only reports a fact.

The event goes to the Prefect server's events API (`POST {PREFECT_API_URL}/events`, the REST form of
`prefect.events.emit_event`): a plain HTTP call whose answer says whether it was taken, where `emit_event` hands
the event to a background worker that may drop it. So an event is never lost silently: a thread looks after every
stored correction (and every `RETRY_SECONDS`), claims the announcement in the registry's database (one server process
of many wins it), sends it, and marks it sent; a send that fails gives the claim back, is logged once per outage and
tried again. Prefect's side: an event the server has accepted is evaluated by its triggers service; one sent while
the server is down is not accepted, so it is sent again when the server answers.
"""

import logging
import threading
import uuid
from typing import Any

import httpx

from mnist_core.registry.feedback import FeedbackStore
from mnist_core.stamps import utc_iso

EVENT = "mnist.feedback.ready"
RETRY_SECONDS = 15.0
LOG = logging.getLogger("mnist.serve")


def post_event(api_url: str, event: str, resource_id: str, payload: dict[str, Any]) -> None:
    """One event to a Prefect server's events API; raises httpx.HTTPError when it is not taken."""
    body = [{"id": str(uuid.uuid4()), "occurred": utc_iso(), "event": event,
             "resource": {"prefect.resource.id": resource_id}, "related": [], "payload": payload}]  # fmt: skip
    response = httpx.post(f"{api_url.rstrip('/')}/events", json=body, timeout=5.0)
    response.raise_for_status()


class FeedbackAnnouncer:
    """Counts the pending corrections of `dataset` and announces each `threshold` of them once. Without an
    `api_url` (no Prefect server configured) it only counts, for /metrics."""

    def __init__(self, store: FeedbackStore, dataset: str, threshold: int, api_url: str | None) -> None:
        self.store, self.dataset, self.threshold, self.api_url = store, dataset, threshold, api_url
        self.pending: int | None = None  # None until counted (or while the database is down)
        self.announced = 0
        self._wake, self._stopped = threading.Event(), threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="mnist-feedback-announcer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def poke(self) -> None:
        """A correction was stored: count (and maybe announce) now, off the request."""
        self._wake.set()

    def _loop(self) -> None:
        while not self._stopped.is_set():
            self.check()
            self._wake.wait(RETRY_SECONDS)
            self._wake.clear()

    def check(self) -> bool:
        """Count the pending corrections; announce them if they reached the threshold and nobody has yet. True
        when this call sent the event."""
        try:
            pending = self.store.pending(self.dataset)
        except Exception as error:  # noqa: BLE001 - the database down: counted again at the next look
            self.pending = None
            self._outage(f"cannot count pending corrections ({error})")
            return False
        self.pending = len(pending)
        if self.api_url is None or len(pending) < self.threshold:
            return False
        up_to = pending[self.threshold - 1]  # the correction that reached the threshold names this announcement
        try:
            if self.store.announced_up_to(self.dataset) >= up_to or not self.store.claim_announcement(
                self.dataset, up_to, utc_iso()
            ):
                return False
        except Exception as error:  # noqa: BLE001
            self._outage(f"cannot claim the announcement ({error})")
            return False
        # output_dir: where the corrections and the champion live, so the triggered run trains and promotes there.
        payload = {"dataset": self.dataset, "pending": len(pending), "threshold": self.threshold,
                   "first_id": pending[0], "up_to_id": up_to, "output_dir": str(self.store.root)}  # fmt: skip
        try:
            post_event(self.api_url, EVENT, f"mnist.feedback.{self.dataset}", payload)
        except httpx.HTTPError as error:
            self.store.announcement_sent(self.dataset, up_to, None)  # given back: tried again at the next look
            self._outage(f"{EVENT} not sent to {self.api_url} ({error}); trying again every {RETRY_SECONDS:g} s")
            return False
        self.store.announcement_sent(self.dataset, up_to, utc_iso())
        self.announced += 1
        self._failing = False
        LOG.info("%s sent: %d corrections pending (threshold %d)", EVENT, len(pending), self.threshold)
        return True

    def _outage(self, message: str) -> None:
        if not self._failing:
            LOG.warning("mnist serve: %s", message)
        self._failing = True
