"""A sweep's trials as flow runs: started as runs of the `mnist/trial` deployment (the pool's free workers take
them) or by any other starter, `concurrency` at a time, polled through the Prefect API until they end or time out
(then cancelled), their results read back from the artifacts they published, and cancelled with their sweep. The
search itself (Optuna's ask-and-tell) is `mnist_core/sweep.py`; the `run-trials` task (tasks/sweep.py) drives this."""

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import optuna
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.states import Cancelling

from mnist_core.config import RunParams
from mnist_core.sweep import FINAL_STATES, SweepParams, ask, check_trial, make_study

TRIAL_DEPLOYMENT = "mnist/trial"
POLL_S = 1.0


def sweep_tag(sweep_run_id: uuid.UUID | str) -> str:
    return f"sweep-{sweep_run_id}"


def trial_result(client: SyncPrefectClient, flow_run_id: uuid.UUID, dataset: str) -> dict[str, Any] | None:
    """The figures a trial published (its `<dataset>-run-result` artifact), or None if it published none."""
    artifact_filter = ArtifactFilter(
        flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]), key=ArtifactFilterKey(any_=[f"{dataset}-run-result"])
    )
    found = client.read_artifacts(artifact_filter=artifact_filter, limit=1)
    if not found:
        return None
    data = found[0].data
    return (json.loads(data) if isinstance(data, str) else data)[0]


def _row(number: int, values: dict[str, Any], run: FlowRun, result: dict[str, Any] | None) -> dict[str, Any]:
    state = run.state
    return {
        "trial": number,
        "params": json.dumps(values, sort_keys=True),
        "state": state.type.value if state else "UNKNOWN",
        "val_accuracy": result["best_val_accuracy"] if result else None,
        "test_accuracy": result["test_accuracy"] if result else None,
        "train_seconds": result["train_seconds"] if result else None,
        "worker": result["worker"] if result else None,
        "run_dir": result["run_dir"] if result else None,
        "artifact_store": result.get("artifact_store") or None if result else None,
        "card_sha256": result.get("card_sha256") or None if result else None,
        "flow_run_id": str(run.id),
        "error": None if result else (state.message if state else "no state") or "",
    }


Starter = Callable[[RunParams, list[str]], uuid.UUID]  # a trial's run parameters and tags -> its flow run id


class Trials:
    """The ask-and-tell loop: at most `concurrency` trials in flight; each result told to the study."""

    def __init__(self, params: SweepParams, sweep_run_id: uuid.UUID, start: Starter) -> None:
        self.params, self.start, self.tags = params, start, [sweep_tag(sweep_run_id), "sweep-trial"]
        self.study = make_study(params)
        self.rows: list[dict[str, Any]] = []
        self.in_flight: dict[uuid.UUID, tuple[optuna.Trial, dict[str, Any], float]] = {}

    def launch(self) -> None:
        trial, values = ask(self.study, self.params)
        run_params = check_trial(self.params.base, {**values, "promote": False, "force_retrain": True})
        run_id = self.start(run_params, self.tags)
        self.in_flight[run_id] = (trial, values, time.monotonic())

    def settle(self, client: SyncPrefectClient, run: FlowRun, timed_out: bool = False) -> None:
        trial, values, _ = self.in_flight.pop(run.id)
        completed = run.state_type is not None and run.state_type.value == "COMPLETED"
        result = trial_result(client, run.id, self.params.base.dataset) if completed else None
        row = _row(trial.number + 1, values, run, result)
        if timed_out:
            # Given up, and stopped: a trial left running would hold its worker for nothing.
            client.set_flow_run_state(run.id, Cancelling(message="its sweep gave up waiting for it"), force=True)
            row.update(state="TIMED_OUT", error=f"unfinished after {self.params.trial_timeout_s:.0f} s; cancelled")
        self.rows.append(row)
        if result is not None:
            self.study.tell(trial, result["best_val_accuracy"])
        else:
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)


def run_all(
    params: SweepParams,
    sweep_run_id: uuid.UUID,
    start: Starter,
    concurrency: int,
    settled: Callable[[dict[str, Any]], None],
) -> list[dict[str, Any]]:
    """Every trial's row, in the order they finished; `settled(row)` is told of each as it finishes."""
    total = params.planned_trials
    trials = Trials(params, sweep_run_id, start)
    with get_client(sync_client=True) as client:
        while len(trials.rows) < total:
            while len(trials.in_flight) < concurrency and len(trials.rows) + len(trials.in_flight) < total:
                trials.launch()
            for run_id, (_, _, started) in list(trials.in_flight.items()):
                run = client.read_flow_run(run_id)
                timed_out = time.monotonic() - started > params.trial_timeout_s
                if run.state_type and run.state_type.value in FINAL_STATES or timed_out:
                    trials.settle(client, run, timed_out)
                    settled(trials.rows[-1])
            if trials.in_flight:
                time.sleep(POLL_S)
    return trials.rows


def start_on_pool(run_params: RunParams, tags: list[str]) -> uuid.UUID:
    """A run of the trial deployment. timeout=0: returns once the run exists; the pool's workers pick it up as
    they are free."""
    run = run_deployment(
        TRIAL_DEPLOYMENT, parameters={"params": run_params.model_dump(mode="json")}, timeout=0, tags=tags
    )
    return run.id


def cancel_trials(sweep_run_id: uuid.UUID | str) -> int:
    """Cancel the trials a sweep started that have not finished; returns how many."""
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[sweep_tag(sweep_run_id)]))
        )
        unfinished = [run for run in runs if not (run.state_type and run.state_type.value in FINAL_STATES)]
        for run in unfinished:
            client.set_flow_run_state(run.id, Cancelling(message=f"its sweep {sweep_run_id} was cancelled"), force=True)
    return len(unfinished)
