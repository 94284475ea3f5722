from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from mnist_core.config import RunParams
from mnist_core.evaluate import score_model_file
from mnist_core.export import append_to_report
from mnist_core.prepare import load_prepared
from mnist_core.records import Exported, Prepared, Promotion
from mnist_core.registry import ChampionPointer, promotion_markdown, record_run
from tasks.publish import BestEffort


@task(name="promote", cache_policy=NO_CACHE, persist_result=False)
def promote(exported: Exported, prepared: Prepared, params: RunParams, device: str) -> Promotion:
    """Record the run in the registry and make it champion if it beats the current one on the same test set."""
    data = load_prepared(prepared.path, device)

    def rescore(champion: ChampionPointer) -> float:
        return score_model_file(champion.model, data["test_images"], data["test_labels"])

    promotion = record_run(params.output_dir, exported, params.promotion_margin, params.force_promote, rescore)
    section = promotion_markdown(promotion, params.dataset)
    append_to_report(exported.report, section)
    logger = get_run_logger()
    with BestEffort(logger).attempt("the promotion decision"):
        create_markdown_artifact(key=f"{params.dataset}-promotion", markdown=section, description="Promotion decision")
    logger.info("%s", promotion.reason)
    return promotion
