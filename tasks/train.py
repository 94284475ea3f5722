import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import State, get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from mnist_core.config import RunParams
from mnist_core.device import describe_environment, resolve_device
from mnist_core.errors import PipelineError
from mnist_core.export import public_params
from mnist_core.model import save_weights
from mnist_core.prepare import load_prepared
from mnist_core.train import EpochStats, checkpoint_dir, train_model


def _worth_retrying(task: Any, task_run: Any, state: State) -> bool:
    """Retry crashes from the environment (I/O, a lost device); a PipelineError (divergence, a foreign
    checkpoint, bad data) would only fail the same way again. A retry resumes from the last checkpoint."""
    error = state.result(raise_on_failure=False)
    return isinstance(error, BaseException) and not isinstance(error, PipelineError)


@task(name="train", retries=1, retry_condition_fn=_worth_retrying, cache_policy=NO_CACHE, persist_result=False)
def train(prepared: dict[str, Any], params: RunParams) -> dict[str, Any]:
    """Train on the prepared data; returns the path of the best weights and the per-epoch history."""
    started = time.perf_counter()
    logger = get_run_logger()
    device = resolve_device(params.device)
    environment = describe_environment(device)
    logger.info("parameters: %s", json.dumps(public_params(params)))
    logger.info("environment: %s", environment)
    data = load_prepared(Path(prepared["path"]), device)
    work_dir = checkpoint_dir(params)

    progress_id = create_progress_artifact(
        progress=0.0, key=f"{params.dataset}-training-progress", description=f"Epochs done of {params.epochs}"
    )

    def report_epoch(stats: EpochStats) -> None:
        logger.info(
            "epoch %d/%d: train loss %.4f, val loss %.4f, val acc %.2f%%, %.2f s, %.0f samples/s",
            stats.epoch, params.epochs, stats.train_loss, stats.val_loss, 100 * stats.val_accuracy,
            stats.seconds, stats.samples_per_s,
        )  # fmt: skip
        update_progress_artifact(artifact_id=progress_id, progress=100.0 * stats.epoch / params.epochs)

    result = train_model(data, params, device, work_dir / "checkpoint.pt", report_epoch)
    # Also when the run resumed after its last epoch, so no epoch was reported here.
    update_progress_artifact(artifact_id=progress_id, progress=100.0)
    model_path = work_dir / "model.safetensors"
    save_weights(result.model, model_path)
    if result.resumed_from_epoch:
        logger.info("resumed from the checkpoint after epoch %d", result.resumed_from_epoch)
    return {
        "work_dir": str(work_dir),
        "model_path": str(model_path),
        "history": [asdict(stats) for stats in result.history],  # a few floats per epoch
        "best_epoch": result.best_epoch,
        "train_seconds": result.train_seconds,
        "resumed_from_epoch": result.resumed_from_epoch,
        "setup_seconds": result.extra["setup_seconds"],
        "precision": result.precision,
        "step_kind": result.step_kind,
        "environment": {**environment, "cpu_threads": result.extra["cpu_threads"]},
        "seconds": time.perf_counter() - started,
    }
