from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from mnist_core.data.idx import CLASS_NAMES
from mnist_core.data.prepare import load_prepared
from mnist_core.evaluation.evaluate import evaluate_model
from mnist_core.records import Evaluation, Prepared, Trained
from mnist_core.training.model import load_weights


@task(name="evaluate", cache_policy=NO_CACHE, persist_result=False)
def evaluate(trained: Trained, prepared: Prepared, device: str) -> Evaluation:
    """Test-set accuracy and loss, per-class metrics and the confusion matrix of the trained model."""
    model = load_weights(trained.model_path, device)
    data = load_prepared(prepared.path, device)
    extra = (data["extra_test_images"], data["extra_test_labels"]) if prepared.sizes["extra_test"] else None
    evaluation = evaluate_model(model, data["test_images"], data["test_labels"], CLASS_NAMES[prepared.dataset], extra)
    logger = get_run_logger()
    logger.info("test accuracy %.2f%%, test loss %.4f", 100 * evaluation.accuracy, evaluation.loss)
    if evaluation.extra_accuracy is not None:
        logger.info(
            "accuracy on the %d test images of extra_data: %.2f%%",
            evaluation.extra_size,
            100 * evaluation.extra_accuracy,
        )
    return evaluation
