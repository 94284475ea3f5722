import json
import math
from typing import Any
from uuid import UUID

import torch
from prefect import State, get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from mnist_core.config import RunParams
from mnist_core.data.not_digits import load_outliers
from mnist_core.data.prepare import load_prepared
from mnist_core.errors import PipelineError, disguised_interrupt
from mnist_core.layout import WEIGHTS_FILE
from mnist_core.records import EpochStats, Prepared, Trained
from mnist_core.training.checkpoint import CHECKPOINT_FILE, checkpoint_dir, claim_checkpoint_data
from mnist_core.training.loop import train_model
from mnist_core.training.model import save_weights
from reporting.publish import PUBLISH_RETRIES, BestEffort
from reporting.terminal import chain, training_bar
from tasks.stops import raise_a_lost_stop


def _worth_retrying(task: Any, task_run: Any, state: State) -> bool:
    """Retry failures from the environment (I/O, a lost device); a PipelineError (divergence, a foreign
    checkpoint, bad data) would only fail the same way again, and an interrupt (Ctrl-C, SIGTERM, a cancel) is
    the user stopping the run. A retry resumes from the last checkpoint."""
    error = state.result(raise_on_failure=False)
    return isinstance(error, Exception) and not isinstance(error, PipelineError) and not disguised_interrupt(error)


@task(name="train", retries=1, retry_condition_fn=_worth_retrying, cache_policy=NO_CACHE, persist_result=False)
def train(prepared: Prepared, params: RunParams, device: str) -> Trained:
    """Train on the prepared data, resuming from the run's checkpoint; the best weights go to its folder."""
    logger = get_run_logger()
    logger.info("parameters: %s", json.dumps(params.public_dump()))
    data = load_prepared(prepared.path, device)
    # The generated outliers and the user's own (a `not-a-digit` folder of the extra images), drawn from as one.
    outliers = [data.pop("extra_outlier_images")]
    if prepared.outliers is not None:
        outliers.append(load_outliers(prepared.outliers, device))
    data["outlier_images"] = torch.cat(outliers)
    work_dir = checkpoint_dir(params)
    claim_checkpoint_data(work_dir, prepared.path.name, params.resume)
    publisher = BestEffort(logger)
    progress_id: UUID | None = None
    with publisher.attempt("the training progress"):
        progress_id = create_progress_artifact(
            progress=0.0, key=f"{params.dataset}-training-progress", description=f"Epochs done of {params.epochs}"
        )

    def show_progress(percent: float, retries: int) -> None:
        if progress_id is not None:
            with publisher.attempt("the training progress", retries=retries):
                update_progress_artifact(artifact_id=progress_id, progress=percent)

    def report_progress(stats: EpochStats) -> None:
        # One try per epoch, none for a while after one failed: a progress bar is not worth holding training up.
        if not publisher.resting():
            show_progress(100.0 * stats.epoch / params.epochs, retries=0)

    steps_per_epoch = math.ceil(prepared.sizes["train"] / min(params.batch_size, prepared.sizes["train"]))
    with training_bar(params.epochs, steps_per_epoch) as bar:
        result = train_model(
            data,
            params,
            torch.device(device),
            work_dir / CHECKPOINT_FILE,
            on_epoch=chain(report_progress, bar and bar.epoch_done, lambda _: raise_a_lost_stop()),
            on_step=bar and bar.step,
            normalization=(prepared.mean, prepared.std),
            logger=logger,
        )
    # The last word, with retries, whatever happened to the epochs' (and when the run resumed after its last epoch).
    show_progress(100.0, retries=PUBLISH_RETRIES)
    model_path = work_dir / WEIGHTS_FILE
    save_weights(result.model, model_path)
    return Trained(**result.model_dump(exclude={"model"}), model_path=model_path, checkpoint_dir=work_dir)
