"""The `mnist-monitor` flow under the session's Prefect server: a window like the reference publishes its artifacts
and stays quiet; a drifted window is recorded, drawn over time and announced as `mnist.drift.detected` with its
figures, read back from the server's events API. And the reference the real `mnist` flow writes into its card."""

import json

import numpy as np
import pytest

from mnist_core.evaluation.monitoring import MonitorSettings
from mnist_core.registry.monitoring import MonitorParams, MonitorStore
from tests.support.artifacts import read_artifacts
from tests.support.monitoring import champion_with_reference, log_window, logits_of, served
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow


def drift_events(run_id: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    wanted = EventFilter(event=EventNameFilter(name=["mnist.drift.detected"]),
                         resource=EventResourceFilter(id=[f"mnist.model.{run_id}"]))  # fmt: skip
    with get_client(sync_client=True) as client:
        return client.read_events(filter=wanted, limit=50).events  # the server takes 50 at most (the client asks 100)


def test_the_monitor_publishes_records_and_announces_drift(prefect_server: str, tmp_path) -> None:
    from flows.monitor import monitor
    from launch.server import send_what_is_queued

    rule = champion_with_reference(tmp_path, "run-watched")
    rng = np.random.default_rng(11)
    log_window(tmp_path, "run-watched", served(logits_of(rng, 500), rule), hour=8)
    params, settings = MonitorParams(output_dir=tmp_path), MonitorSettings(window=500)

    state = monitor(params, settings, return_state=True)
    quiet = state.result()
    assert quiet.status == "checked" and quiet.drifted == [], quiet.message
    artifacts = read_artifacts(state.state_details.flow_run_id)
    assert {"mnist-drift", "mnist-drift-report"} <= set(artifacts)
    table = json.loads(artifacts["mnist-drift"].data)  # a table artifact's rows, as JSON text
    assert {row["name"] for row in table} == {"classes", "not_a_digit", "confidence", "score"}

    # Inputs the model is unsure of: the latest 500 predictions are all of them.
    log_window(tmp_path, "run-watched", served(logits_of(rng, 500, margin=3.0), rule), hour=9)
    state = monitor(params, settings, return_state=True)
    drifted = state.result()
    assert set(drifted.drifted) == {"classes", "not_a_digit", "confidence", "score"}, drifted.message
    report = read_artifacts(state.state_details.flow_run_id)["mnist-drift-report"].data
    assert "**yes**" in report and "data:image/png;base64," in report  # the table, and each test over time
    assert [row["drifted"] for row in MonitorStore(tmp_path).checks("mnist", 10)] == [
        "",
        "classes,not_a_digit,confidence,score",
    ]

    send_what_is_queued()
    (event,) = wait_until(lambda: drift_events("run-watched"), 20, "no mnist.drift.detected event on the server")
    assert event.payload["run_id"] == "run-watched" and event.payload["predictions"] == 500
    assert event.payload["tests"]["confidence"]["p_value"] < 0.01 and event.payload["tests"]["score"]["drifted"]
    assert event.resource["mnist.dataset"] == "mnist"
    assert event.payload["output_dir"] == str(tmp_path.resolve())  # what mnist/train's trigger passes on
    # Related: the flow run that found it (Prefect adds it), so an automation can link back to the evidence.
    assert any(related.id == f"prefect.flow-run.{state.state_details.flow_run_id}" for related in event.related)


def test_the_real_flow_writes_the_reference_into_the_model_card(trained_run) -> None:
    result, _, _ = trained_run
    reference = result.exported.card.monitoring
    assert reference is not None and reference.size == 5000 and sum(reference.class_counts) == 5000
    assert reference.not_a_digit_rate == pytest.approx(result.exported.card.not_a_digit.val_false_refusal)
    assert len(reference.confidence_quantiles) == 1000 and reference.mean_confidence > 0.9


def test_a_damaged_prediction_log_fails_once_in_one_line(prefect_server: str, tmp_path) -> None:
    """Found by a fault battery: a text where a confidence belongs ended in a ValueError traceback after two retries
    10 s apart. Now a DataError naming the champion's log, and the read is not retried (run_count 1)."""
    import sqlite3

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.monitor import monitor

    rule = champion_with_reference(tmp_path, "run-damaged")
    log_window(tmp_path, "run-damaged", served(logits_of(np.random.default_rng(12), 200), rule), hour=8)
    with sqlite3.connect(tmp_path / "registry.db") as database:
        database.execute("UPDATE predictions SET confidence = 'abc' WHERE rowid = (SELECT MAX(rowid) FROM predictions)")
    state = monitor(MonitorParams(output_dir=tmp_path), MonitorSettings(window=200), return_state=True)
    assert state.is_failed()
    assert "DataError: the prediction log of champion run-damaged holds a value that is not a number" in state.message
    with get_client(sync_client=True) as client:
        flow_run_id = state.state_details.flow_run_id
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    (read,) = [run for run in task_runs if run.name.startswith("read-predictions")]
    assert read.run_count == 1, read.run_count
