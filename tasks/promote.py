from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from mnist_core.config import RunParams
from mnist_core.data.prepare import load_prepared
from mnist_core.evaluation.evaluate import decisive_accuracy, score_model_file
from mnist_core.export.run_folder import append_to_report
from mnist_core.records import Exported, Prepared, Promotion
from mnist_core.registry.store import ChampionPointer, promotion_markdown, record_run
from reporting.publish import BestEffort

MEASURES = {
    "test": "test accuracy",
    "extra": "accuracy on the extra images' test part",
    "combined": "accuracy on the test set and the extra images' test part, pooled",
}


@task(name="promote", cache_policy=NO_CACHE, persist_result=False)
def promote(exported: Exported, prepared: Prepared, params: RunParams, device: str) -> Promotion:
    """Record the run in the registry and make it champion if it beats the current one on the same test images:
    the dataset's test set and, with extra images, their test part (`promotion_metric` says which decides)."""
    data = load_prepared(prepared.path, device)
    sizes, metrics = prepared.sizes, exported.card.metrics
    has_extra = sizes["extra_test"] > 0
    metric = params.promotion_metric if has_extra else "test"
    # test images -> (this run's accuracy, the champion's: filled in when there is a champion to re-score)
    scores: dict[str, tuple[float | None, float | None]] = {
        "test": (metrics.test_accuracy, None),
        "extra": (metrics.extra_test_accuracy, None),
    }

    def rescore(champion: ChampionPointer) -> float:
        test = score_model_file(champion.model, data["test_images"], data["test_labels"])
        extra = (
            score_model_file(champion.model, data["extra_test_images"], data["extra_test_labels"])
            if has_extra
            else None
        )
        scores["test"] = (metrics.test_accuracy, test)
        scores["extra"] = (metrics.extra_test_accuracy, extra)
        return decisive_accuracy(test, extra, sizes["test"], sizes["extra_test"], metric)

    challenger = decisive_accuracy(
        metrics.test_accuracy, metrics.extra_test_accuracy, sizes["test"], sizes["extra_test"], metric
    )
    promotion = record_run(
        params.output_dir,
        exported,
        params.promotion_margin,
        params.force_promote,
        rescore,
        challenger,
        MEASURES[metric],
    )
    section = promotion_markdown(promotion, params.dataset, scores if has_extra else None)
    append_to_report(exported.report, section)
    logger = get_run_logger()
    with BestEffort(logger).attempt("the promotion decision"):
        create_markdown_artifact(key=f"{params.dataset}-promotion", markdown=section, description="Promotion decision")
    logger.info("%s", promotion.reason)
    return promotion
