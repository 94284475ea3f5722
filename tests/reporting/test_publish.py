"""Publishing artifacts is best effort: an API that does not answer is logged once, never fatal, and costs
seconds, not the client's minute of back-off."""

import logging

import httpx
import pytest
from prefect.settings import PREFECT_CLIENT_MAX_RETRIES

from reporting.publish import PUBLISH_RETRIES, BestEffort


def _wrapped_interrupt() -> Exception:
    """What pydantic raises when Ctrl-C lands inside one of its serializers (seen in a real Ctrl-C of a run)."""
    from pydantic import BaseModel, model_serializer

    class Model(BaseModel):
        @model_serializer(mode="wrap")
        def _ser_model(self, handler):  # noqa: ANN001, ANN202
            raise KeyboardInterrupt

    try:
        Model().model_dump()
    except Exception as error:  # noqa: BLE001
        return error
    raise AssertionError("pydantic did not wrap the interrupt")


def test_a_ctrl_c_wrapped_by_the_client_still_stops_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """It was once logged as a publishing failure, and the train task retried and finished the run."""
    from prefect.states import Failed

    import reporting.publish as publish_module
    from tasks.train import _worth_retrying

    publisher = BestEffort(logging.getLogger("test-publish"))
    wrapped = _wrapped_interrupt()
    with pytest.raises(KeyboardInterrupt), publisher.attempt("the training progress"):
        raise wrapped
    assert publisher.failures == 0

    def settings_interrupted(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise wrapped

    monkeypatch.setattr(publish_module, "temporary_settings", settings_interrupted)
    with pytest.raises(KeyboardInterrupt), publisher.attempt("the training progress"):
        pass
    error = RuntimeError("publishing failed")
    error.__context__ = wrapped
    assert not _worth_retrying(None, None, Failed(data=error))
    assert _worth_retrying(None, None, Failed(data=OSError("disk went away")))


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
    from reporting import publish

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


@pytest.mark.filterwarnings("ignore:Artifact creation outside of a flow or task run:FutureWarning")
def test_publishing_to_a_server_that_is_gone_costs_seconds_not_minutes(caplog: pytest.LogCaptureFixture) -> None:
    """Against a closed port, through Prefect's real client: one try at progress, the default two retries at the
    rest. Without the cap, the client backs off for about a minute per call."""
    import time
    import uuid

    from prefect.artifacts import create_markdown_artifact, update_progress_artifact
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from launch.server import free_port

    publisher = BestEffort(logging.getLogger("test-publish"))
    with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{free_port()}/api"}):
        started = time.monotonic()
        with publisher.attempt("the training progress", retries=0):
            update_progress_artifact(artifact_id=uuid.uuid4(), progress=50.0)
        one_try = time.monotonic() - started
        started = time.monotonic()
        with publisher.attempt("the report"):
            create_markdown_artifact(key="gone", markdown="# a report")
        with_retries = time.monotonic() - started
    assert publisher.failures == 2
    assert one_try < 5 and with_retries < 20, (one_try, with_retries)
