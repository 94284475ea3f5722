from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from mnist_core.config import RunParams
from mnist_core.records import Corrections
from mnist_core.registry.corrections import gather_corrections
from mnist_core.registry.feedback import FeedbackStore
from tasks.retries import storage_fault


@task(
    name="gather-corrections",
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=storage_fault,
    cache_policy=NO_CACHE,
    persist_result=False,
)
def gather(params: RunParams) -> Corrections:
    """The corrections sent to `mnist serve`, from the registry and the artifact store: the older as an image folder
    the run trains on (its extra images), the newest held back to score on."""
    corrections = gather_corrections(
        FeedbackStore(params.output_dir), params.dataset, params.data_dir, params.correction_holdout
    )
    logger = get_run_logger()
    for line in corrections.skipped:
        logger.warning("%s", line)
    logger.info(
        "corrections: %d to train on (feedback %s), %d held back to score on (the newest)",
        len(corrections.trained_ids),
        _span(corrections.trained_ids),
        len(corrections.held_back_ids),
    )
    return corrections


def _span(ids: list[int]) -> str:
    return f"{ids[0]}-{ids[-1]}" if ids else "none"
