"""Artifacts are a view of what the run wrote to disk: publishing them must never fail or hold up the run."""

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings

from mnist_core.errors import disguised_interrupt

# A busy server (503) gets a second and third try, 2 and 4 s apart; a server that is gone costs ~6 s, not the
# client's default back-off of about a minute per call.
PUBLISH_RETRIES = 2
# Even one try costs ~1.5 s against a server that is gone (the HTTP transport's own connect retries): after a
# failure, frequent publications (per-epoch progress) wait this long before the next try.
REST_AFTER_FAILURE_S = 30.0


class BestEffort:
    """`with publisher.attempt("the report"):` publishes what is inside; if the API does not answer, the rest of
    the block is skipped (its calls would fail the same way), a warning is logged the first time, and the run
    goes on."""

    def __init__(self, logger: logging.Logger | logging.LoggerAdapter[Any]) -> None:
        self.logger = logger
        self.failures = 0
        self.failed_at = -float("inf")

    def resting(self) -> bool:
        """True for REST_AFTER_FAILURE_S after a failure: skip what can wait (the next one catches up)."""
        return time.monotonic() - self.failed_at < REST_AFTER_FAILURE_S

    @contextlib.contextmanager
    def attempt(self, what: str, retries: int = PUBLISH_RETRIES) -> Iterator[None]:
        # Entered apart from the body: an error swallowed before the yield would surface as "generator didn't
        # yield" (an Exception, which a task then retries); and Ctrl-C can land in here too.
        try:
            settings = temporary_settings({PREFECT_CLIENT_MAX_RETRIES: retries})
            settings.__enter__()
        except Exception as error:
            raise disguised_interrupt(error) or error from None
        try:
            yield
        except Exception as error:  # noqa: BLE001 - whatever the client raised, the run goes on
            self._failed(what, error)
        finally:
            settings.__exit__(None, None, None)

    def _failed(self, what: str, error: Exception) -> None:
        interrupt = disguised_interrupt(error)
        if interrupt is not None:
            # Ctrl-C or SIGTERM landed inside the client, which wrapped it (pydantic's serializers raise
            # PydanticSerializationError from a KeyboardInterrupt): the user's stop, not a publishing failure.
            raise interrupt
        if not self.failures:
            self.logger.warning("could not publish %s to the Prefect API (%s); the run goes on", what, error)
        self.failures += 1
        self.failed_at = time.monotonic()
