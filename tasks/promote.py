from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from mnist_core.config import RunParams
from mnist_core.data.prepare import load_prepared
from mnist_core.errors import PipelineError
from mnist_core.evaluation.evaluate import decisive_accuracy, score_answers, score_model_file
from mnist_core.export.run_folder import append_to_report
from mnist_core.layout import WEIGHTS_FILE
from mnist_core.records import Corrections, Exported, Prepared, Promotion
from mnist_core.registry.artifacts import recorded_run_folder
from mnist_core.registry.corrections import load_held_back
from mnist_core.registry.feedback import FeedbackStore
from mnist_core.registry.rule import ChampionScore, judge, judge_with_corrections
from mnist_core.registry.store import ChampionPointer, RegistryStore, entries, promotion_markdown
from reporting.publish import BestEffort

MEASURES = {
    "test": "test accuracy",
    "extra": "accuracy on the extra images' test part",
    "combined": "accuracy on the test set and the extra images' test part, pooled",
}


@task(name="promote", cache_policy=NO_CACHE, persist_result=False)
def promote(
    exported: Exported, prepared: Prepared, params: RunParams, device: str, corrections: Corrections | None = None
) -> Promotion:
    """Record the run in the registry and make it champion if it beats the current one on the same test images:
    the dataset's test set and, with extra images, their test part (`promotion_metric` says which decides). A run
    that learnt from corrections is judged on the held-back corrections and the test set instead
    (`judge_with_corrections`), and the registry records which corrections it trained on and held back."""
    data = load_prepared(prepared.path, device)
    sizes, metrics = prepared.sizes, exported.card.metrics
    has_extra = sizes["extra_test"] > 0
    metric = params.promotion_metric if has_extra else "test"
    challenger = decisive_accuracy(metrics.test_accuracy, metrics.extra_test_accuracy, sizes["test"],
                                   sizes["extra_test"], metric)  # fmt: skip
    # test images -> (this run's accuracy, the champion's re-scored on the same images; None without a champion)
    scores: dict[str, tuple[float | None, float | None]] = {
        "test": (metrics.test_accuracy, None),
        "extra": (metrics.extra_test_accuracy, None),
    }
    store = RegistryStore(params.output_dir)
    # Under the lock, so that the champion re-scored is still the champion when the decision is recorded.
    with store.locked() as registry:
        promotion = store.recover(exported, params.promotion_margin)
        if promotion is None:
            champion = registry.champion(params.dataset)
            score = None
            if champion is not None:
                score, champion_scores = rescore(champion, data, has_extra, sizes, metric, params.output_dir)
                scores = {key: (scores[key][0], champion_scores[key]) for key in scores}
            promotion = judge(challenger, score, params.promotion_margin, params.force_promote, MEASURES[metric])
            if corrections is not None and corrections.held_back_ids:
                promotion = _judged_on_corrections(exported, corrections, champion, score, params)
            store.commit(*entries(exported, promotion, champion))
    if corrections is not None:
        FeedbackStore(params.output_dir).record_corrections(
            exported.run_id, corrections.trained_ids, corrections.held_back_ids
        )
    section = promotion_markdown(promotion, params.dataset, scores if has_extra else None, exported.run_id)
    append_to_report(exported.report, section)
    logger = get_run_logger()
    with BestEffort(logger).attempt("the promotion decision"):
        create_markdown_artifact(key=f"{params.dataset}-promotion", markdown=section, description="Promotion decision")
    logger.info("%s", promotion.reason)
    return promotion


def rescore(
    champion: ChampionPointer,
    data: dict[str, Any],
    has_extra: bool,
    sizes: dict[str, int],
    metric: str,
    output_dir: Path,
) -> tuple[ChampionScore, dict[str, float | None]]:
    """The champion's model scored on the challenger's test images (and extra test images): the decisive score the
    rule compares, and each set's accuracy for the report. A champion whose model cannot be evaluated (a
    PipelineError: its folder deleted, its file corrupt) is unusable; other errors (permissions) fail the run."""
    try:
        # Its run folder where this machine has it, else its files fetched from the artifact store.
        folder = recorded_run_folder(champion, output_dir)
        model = folder / WEIGHTS_FILE
        test = score_model_file(model, data["test_images"], data["test_labels"])
        extra = score_model_file(model, data["extra_test_images"], data["extra_test_labels"]) if has_extra else None
    except PipelineError as error:
        return ChampionScore(champion.run_id, None, str(error)), {"test": None, "extra": None}
    decisive = decisive_accuracy(test, extra, sizes["test"], sizes["extra_test"], metric)
    return ChampionScore(champion.run_id, decisive), {"test": test, "extra": extra}


def _judged_on_corrections(
    exported: Exported,
    corrections: Corrections,
    champion: ChampionPointer | None,
    score: ChampionScore | None,
    params: RunParams,
) -> Promotion:
    """Both models read the held-back corrections as every path answers (not a digit included); the champion's
    test score is the one `rescore` measured on the challenger's test images."""
    images, labels = load_held_back(corrections.held_back)
    challenger_held = score_answers(exported.run_dir, images, labels)
    champion_held = None
    if champion is not None and score is not None and score.accuracy is not None:
        champion_held = score_answers(recorded_run_folder(champion, params.output_dir), images, labels)
    test = exported.card.metrics.test_accuracy
    return judge_with_corrections(
        test, challenger_held, score, champion_held, params.correction_tolerance, params.force_promote
    )
