"""Publishing artifacts is best effort: an API that does not answer is logged once, never fatal, never slow."""

import logging

import httpx
import pytest
from prefect.settings import PREFECT_CLIENT_MAX_RETRIES

from tasks.publish import PUBLISH_RETRIES, BestEffort


def test_a_failed_publication_is_logged_once_and_the_run_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    publisher = BestEffort(logging.getLogger("test-publish"))
    retries_seen, after_failure = [], []
    with caplog.at_level(logging.WARNING, logger="test-publish"):
        for epoch in range(3):
            with publisher.attempt("the training progress", retries=0):
                retries_seen.append(PREFECT_CLIENT_MAX_RETRIES.value())
                raise httpx.ConnectError("All connection attempts failed")
            after_failure.append(epoch)  # the block is left, the loop (training) goes on
        with publisher.attempt("the report"):
            retries_seen.append(PREFECT_CLIENT_MAX_RETRIES.value())
    assert retries_seen == [0, 0, 0, PUBLISH_RETRIES] and after_failure == [0, 1, 2]
    assert publisher.failures == 3 and publisher.resting()
    warnings = [record.getMessage() for record in caplog.records]
    assert warnings == [
        "could not publish the training progress to the Prefect API (All connection attempts failed); the run goes on"
    ]


def test_a_publisher_rests_only_after_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    from tasks import publish

    publisher = BestEffort(logging.getLogger("test-publish"))
    assert not publisher.resting()
    with publisher.attempt("the training progress", retries=0):
        raise httpx.ConnectError("refused")
    assert publisher.resting()
    monkeypatch.setattr(publish, "REST_AFTER_FAILURE_S", 0.0)
    assert not publisher.resting()


def test_an_interrupt_is_never_swallowed() -> None:
    with pytest.raises(KeyboardInterrupt), BestEffort(logging.getLogger("test-publish")).attempt("anything"):
        raise KeyboardInterrupt
