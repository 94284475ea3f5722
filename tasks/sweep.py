"""A sweep's tasks: where its trials run, and running them (tasks/trials.py starts, polls and cancels them)."""

import uuid
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound

from mnist_core.sweep import SweepParams
from reporting.publish import BestEffort
from tasks.trials import TRIAL_DEPLOYMENT, Starter, run_all


@task(name="choose-where-trials-run", cache_policy=NO_CACHE, persist_result=False)
def trial_mode() -> str:
    """'pool' when the API has the trial deployment (a stack, a real server), else 'in-process'."""
    with get_client(sync_client=True) as client:
        try:
            client.read_deployment_by_name(TRIAL_DEPLOYMENT)
        except ObjectNotFound:
            return "in-process"
    return "pool"


@task(name="run-trials", cache_policy=NO_CACHE, persist_result=False)
def run_trials(params: SweepParams, sweep_run_id: uuid.UUID, start: Starter, concurrency: int) -> list[dict[str, Any]]:
    """Every trial's row, in the order they finished: parameters, state, figures, worker, or the error. `start`
    starts one trial (`start_on_pool`, or the flow's own in-process starter), `concurrency` at a time."""
    logger = get_run_logger()
    publisher = BestEffort(logger)
    total = params.planned_trials
    progress_id = None
    with publisher.attempt("the sweep's progress"):
        progress_id = create_progress_artifact(
            progress=0.0, key="mnist-sweep-progress", description=f"of {total} trials"
        )
    done = 0

    def settled(row: dict[str, Any]) -> None:
        nonlocal done
        done += 1
        logger.info(
            "trial %d of %d: %s, validation accuracy %s (%s)",
            done,
            total,
            row["state"],
            row["val_accuracy"],
            row["params"],
        )
        if progress_id is not None and not publisher.resting():
            with publisher.attempt("the sweep's progress", retries=0):
                update_progress_artifact(progress_id, progress=100.0 * done / total)

    return run_all(params, sweep_run_id, start, concurrency, settled)
