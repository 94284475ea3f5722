"""A flow run from the command line (`mnist train`, `mnist predict-batch`, `mnist sweep`): checks, a Prefect API
and signal handling (launch/local.py), the flow, a summary, the exit status. The flows themselves (flows/) know
nothing of the command line; this module imports Prefect, so launch/cli.py imports it only once the arguments are
read, and each command imports only its own flow (the others' modules cost `mnist train` 0.1 s more)."""

import json
import sys

from launch.local import RESUME_HINT, run_from_command_line
from mnist_core.config import RunParams
from mnist_core.errors import PipelineError
from mnist_core.inference.predict import PredictParams
from mnist_core.inference.predict_command import SOME_FAILED
from mnist_core.preflight import preflight
from mnist_core.records import RunResult, Unchanged
from mnist_core.registry.monitoring import MonitorParams
from mnist_core.sweep import SweepParams


def checked_first(params: RunParams, prog: str) -> bool:
    """The run's checks here too (its flow checks again, for deployments): a bad folder or device fails in a
    second, before a Prefect server is started; False after the one-line error."""
    try:
        preflight(params)
    except (PipelineError, OSError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return False
    return True


def train(params: RunParams) -> int:
    """The `mnist` flow; 0, or 1 after a one-line error, 130/143 after Ctrl-C/SIGTERM."""
    from flows.mnist import mnist

    if not checked_first(params, "mnist"):
        return 1
    _, code = run_from_command_line("mnist", lambda: mnist(params), hint=RESUME_HINT, report=print_train_summary)
    return code


def print_train_summary(result: RunResult | Unchanged) -> None:
    if isinstance(result, Unchanged):
        print(
            f"\nNot retrained: nothing changed since run {result.champion_run_id} (same data, parameters "
            "and code); --force-retrain trains anyway.",
            flush=True,
        )
        return
    print(f"\nTest accuracy: {result.exported.card.metrics.test_accuracy:.2%}")
    print(f"Report: {result.exported.report}")
    print(f"Model:  {result.exported.model}")
    print(f"Run folder: {result.exported.run_dir}")
    decision = result.promotion.reason if result.promotion else "not offered for promotion (promote is off)."
    print(f"Champion: {decision}", flush=True)


def predict_batch(params: PredictParams) -> int:
    """The `mnist-predict` flow; SOME_FAILED when an input could not be read."""
    from flows.predict import predict

    summary, code = run_from_command_line("mnist-predict", lambda: predict(params))
    if summary is None:
        return code
    print(f"\n{summary.count} predictions ({summary.failed} failed, {summary.for_review} for review)")
    print(f"Predictions: {summary.predictions_csv}")
    print(f"Model: {summary.model} (SHA-256 {summary.model_sha256})", flush=True)
    return SOME_FAILED if summary.failed else 0


DRIFTED = 3  # `mnist monitor`'s exit status when drift is detected (a script or cron job can act on it)


def monitor(params: MonitorParams) -> int:
    """The `mnist-monitor` flow; DRIFTED when a test is over its threshold."""
    from flows.monitor import monitor as monitor_flow

    result, code = run_from_command_line("mnist-monitor", lambda: monitor_flow(params))
    if result is None:
        return code
    for test in result.tests:
        print(f"{test.name:12} {test.method:24} statistic {test.statistic:<10.4g} p {test.p_value:<10.3g} "
              f"threshold {test.threshold:g}{'  DRIFT' if test.drifted else ''}")  # fmt: skip
    print(f"\n{result.message}", flush=True)
    return DRIFTED if result.drifted else 0


def run_sweep(params: SweepParams) -> int:
    """The `mnist-sweep` flow; its summary as JSON."""
    from flows.sweep import sweep

    if not checked_first(params.base, "mnist-sweep"):  # found by a new user: a missing GPU after 10 s of server
        return 1
    summary, code = run_from_command_line("mnist-sweep", lambda: sweep(params))
    if summary is None:
        return code
    print(json.dumps(summary, indent=2), flush=True)
    return 0
