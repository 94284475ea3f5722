"""The `mnist-monitor` flow: does the champion still see what it was trained for? Its latest predictions (the
prediction log) against its reference (its answers on its validation split, in its model card), by four named
tests; an artifact, a history, and a `mnist.drift.detected` event when a test is over its threshold."""

if __name__ == "__main__":  # a command line: its arguments are read before Prefect is imported
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project, also from a Python without it
    from launch.cli import run_script

    sys.exit(run_script("monitor", sys.argv[1:]))

from prefect import flow

from mnist_core.evaluation.monitoring import MonitorSettings
from mnist_core.registry.monitoring import DriftCheck, MonitorParams
from tasks.monitor import announce_drift, check_drift, publish_drift, read_predictions, record_check


@flow(name="mnist-monitor", log_prints=True)
def monitor(params: MonitorParams | None = None, settings: MonitorSettings | None = None) -> DriftCheck:
    """Compare the champion's latest window of predictions with its reference; record, publish, and announce drift.
    `settings` left out: the window and thresholds of the environment (MNIST_MONITOR_*) or their defaults."""
    params = params or MonitorParams()
    settings = settings or MonitorSettings.from_machine()
    observed = read_predictions(params, settings)
    result = check_drift(observed, settings)
    history = record_check(result, params, settings)
    publish_drift(result, history, settings)
    announce_drift(result, params)
    return result
