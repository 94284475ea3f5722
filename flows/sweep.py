"""The `mnist-sweep` flow: a hyperparameter sweep. Optuna asks for each trial's parameters; each trial is a full
run of the `mnist` flow; the best trial by validation accuracy is offered to the champion/challenger rule.

How trials are placed on the pool: `mnist sweep --help` (mnist_core/sweep.py).
"""

if __name__ == "__main__":  # a command line: its arguments are read before torch and Prefect are imported
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project, also from a Python without it
    from launch.cli import run_script

    sys.exit(run_script("sweep", sys.argv[1:]))

import uuid

from prefect import State, flow, runtime
from prefect.client.schemas.objects import FlowRun
from prefect.logging import get_logger

from flows.mnist import mnist
from mnist_core.config import RunParams
from mnist_core.errors import TrainingError
from mnist_core.preflight import preflight, training_device
from mnist_core.records import Promotion
from mnist_core.sweep import SweepParams
from tasks.download import download
from tasks.promote import promote
from tasks.sweep import run_trials, trial_mode
from tasks.sweep_results import best_trial, publish_sweep
from tasks.transform import transform
from tasks.trials import cancel_trials, start_on_pool


def _cancel_trials(flow: object, flow_run: FlowRun, state: State) -> None:
    """on_cancellation (Prefect passes these by keyword): the trials this sweep started are cancelled with it. It
    runs after the sweep's own process was stopped, in the runner's."""
    count = cancel_trials(flow_run.id)
    get_logger("mnist.sweep").info("sweep %s cancelled: cancelled %d unfinished trials", flow_run.name, count)


def _run_here(run_params: RunParams, tags: list[str]) -> uuid.UUID:
    """No pool: the trial is a subflow of this sweep, run to its end before the next starts."""
    state = mnist(run_params, return_state=True)
    return state.state_details.flow_run_id


@flow(name="mnist-sweep", log_prints=True, on_cancellation=[_cancel_trials])
def sweep(sweep: SweepParams) -> dict:
    """Run the trials (on the pool, or here), rank them by validation accuracy, offer the best to the champion. A
    sweep none of whose trials completed ends Failed, naming each trial's state (its table and summary are
    published all the same)."""
    base = sweep.base.model_copy(update={"promote": True})
    device = training_device(preflight(base))
    mode = trial_mode()
    start, concurrency = (start_on_pool, sweep.concurrency) if mode == "pool" else (_run_here, 1)
    # A grid has as many points as it has: said, not silently capped, when more trials were asked for.
    if "trials" in sweep.model_fields_set and sweep.planned_trials < sweep.trials:
        print(
            f"{sweep.trials} trials asked for, but the grid has {sweep.grid_size} points: "
            f"running {sweep.planned_trials}"
        )
    print(f"{sweep.planned_trials} trials, {concurrency} at a time ({mode})")
    rows = run_trials(sweep, runtime.flow_run.get_id(), start, concurrency)
    promotion: Promotion | None = None
    best = best_trial(rows, base.output_dir) if sweep.promote_best else None
    if best is not None:  # judged like any run: its test accuracy against the champion's, re-scored here
        prepared = transform(download(base.dataset, base.data_dir, base.mirror), base)
        promotion = promote(best, prepared, base, device)
    summary = publish_sweep(rows, sweep, promotion, mode)
    if rows and summary["completed"] == 0:
        states = ", ".join(f"trial {row['trial']} {row['state']}" for row in rows)
        raise TrainingError(f"none of the {len(rows)} trials completed ({states}): the trials table says why")
    return summary
