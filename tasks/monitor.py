"""The drift monitor's tasks: read the champion's latest predictions, test them against its reference, record the
check, publish it, and announce drift as a Prefect event (`mnist.drift.detected`) for automations to act on. The
figures are computed in mnist_core (evaluation/monitoring.py, registry/monitoring.py); these only do the I/O."""

import base64
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event

from mnist_core.evaluation.monitoring import MonitorSettings, plot_history
from mnist_core.registry.monitoring import TESTS, DriftCheck, MonitorParams, MonitorStore, Observed, check, observe
from reporting.publish import BestEffort
from tasks.retries import storage_fault

EVENT = "mnist.drift.detected"


def resource_id(run_id: str) -> str:
    """The event's resource: the model (its run) whose inputs drifted; a trigger can match `mnist.model.*`."""
    return f"mnist.model.{run_id}"


# Retried: the registry database (or the artifact store holding the champion's card) may blink.
@task(name="read-predictions", retries=2, retry_delay_seconds=5, retry_condition_fn=storage_fault,
      cache_policy=NO_CACHE, persist_result=False)  # fmt: skip
def read_predictions(params: MonitorParams, settings: MonitorSettings) -> Observed:
    """The champion, its reference, and its latest `settings.window` predictions."""
    observed = observe(params.output_dir, params.dataset, settings)
    get_run_logger().info("champion %s: %d predictions read", observed.run_id, len(observed.classes))
    return observed


@task(name="check-drift", cache_policy=NO_CACHE, persist_result=False)
def check_drift(observed: Observed, settings: MonitorSettings) -> DriftCheck:
    """The tests of the window against the reference (no I/O)."""
    result = check(observed, settings)
    logger = get_run_logger()
    for test in result.tests:
        logger.info("%s (%s): statistic %.4g, p %.3g, threshold %g%s", test.name, test.method, test.statistic,
                    test.p_value, test.threshold, "  DRIFT" if test.drifted else "")  # fmt: skip
    (logger.warning if result.drifted else logger.info)("%s", result.message)
    return result


@task(name="record-check", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE, persist_result=False)
def record_check(result: DriftCheck, params: MonitorParams, settings: MonitorSettings) -> list[dict[str, Any]]:
    """Add a check that ran to the registry's `drift_checks`; the latest `settings.history` checks, oldest first."""
    store = MonitorStore(params.output_dir)
    if result.status == "checked":
        store.record_check(result.row())
    return store.checks(params.dataset, settings.history)


def report_markdown(result: DriftCheck, history: list[dict[str, Any]], settings: MonitorSettings) -> str:
    lines = [f"# Drift: {result.message}", ""]
    if result.status == "checked":
        lines += [
            f"Champion `{result.run_id}`, the latest {result.predictions} predictions ({result.first_at} to "
            f"{result.last_at}), against its answers on its validation split. A test alarms when its p-value is "
            "below its threshold (settings `MNIST_MONITOR_*`, docs/monitoring.md).",
            "",
            "| test | method | statistic | p-value | threshold | drift |",
            "|---|---|---|---|---|---|",
            *[
                f"| {t.name} | {t.method} | {t.statistic:.4g} | {t.p_value:.3g} | {t.threshold:g} | "
                f"{'**yes**' if t.drifted else 'no'} |"
                for t in result.tests
            ],  # fmt: skip
            "",
            "| figure | window | reference |",
            "|---|---|---|",
            f"| not-a-digit rate | {result.figures['not_a_digit_rate']:.2%} | "
            f"{result.figures['reference_not_a_digit_rate']:.2%} |",
            f"| mean confidence | {result.figures['mean_confidence']:.4f} | "
            f"{result.figures['reference_mean_confidence']:.4f} |",
            "",
        ]
    if history:
        thresholds = {test: settings.threshold(test) for test in TESTS}
        encoded = base64.b64encode(plot_history(history, thresholds)).decode("ascii")
        plot = f"![-log10(p) of each test over time](data:image/png;base64,{encoded})"
        lines += [f"## The last {len(history)} checks", "", plot, ""]
    return "\n".join(lines) + "\n"


@task(name="publish-drift", cache_policy=NO_CACHE, persist_result=False)
def publish_drift(result: DriftCheck, history: list[dict[str, Any]], settings: MonitorSettings) -> None:
    """The `<dataset>-drift` table (this check's tests) and `<dataset>-drift-report` (the figures, a plot of each
    test over the last checks); best effort, as every artifact."""
    with BestEffort(get_run_logger()).attempt("the drift artifacts"):
        if result.tests:
            rows = [test.model_dump() for test in result.tests]
            create_table_artifact(key=f"{result.dataset}-drift", table=rows, description=result.message)
        markdown = report_markdown(result, history, settings)
        create_markdown_artifact(key=f"{result.dataset}-drift-report", markdown=markdown, description=result.message)


@task(name="announce-drift", cache_policy=NO_CACHE, persist_result=False)
def announce_drift(result: DriftCheck, params: MonitorParams) -> str | None:
    """`mnist.drift.detected` with the figures when a test is over its threshold; the event's id, or None. The
    payload names the dataset and the output root (absolute), which mnist/train's trigger passes to the run it
    starts (deployments/prefect.yaml)."""
    if not result.drifted or result.run_id is None:
        return None
    payload = {
        "dataset": result.dataset,
        "output_dir": str(Path(params.output_dir).expanduser().resolve()),
        "run_id": result.run_id,
        "predictions": result.predictions,
        "first_at": result.first_at,
        "last_at": result.last_at,
        "drifted": result.drifted,
        "tests": {
            t.name: {
                "method": t.method,
                "statistic": t.statistic,
                "p_value": t.p_value,
                "threshold": t.threshold,
                "drifted": t.drifted,
            }
            for t in result.tests
        },  # fmt: skip
        "figures": result.figures,
    }
    resource = {"prefect.resource.id": resource_id(result.run_id), "prefect.resource.name": result.run_id,
                "mnist.dataset": result.dataset}  # fmt: skip
    event = emit_event(event=EVENT, resource=resource, payload=payload)
    get_run_logger().warning("%s emitted for %s: %s", EVENT, result.run_id, ", ".join(result.drifted))
    return str(event.id) if event is not None else None
