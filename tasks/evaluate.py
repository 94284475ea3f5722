import time
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from mnist_core.config import RunParams
from mnist_core.device import resolve_device
from mnist_core.evaluate import CLASS_NAMES, evaluate_model
from mnist_core.model import load_weights
from mnist_core.prepare import load_prepared


@task(name="evaluate", cache_policy=NO_CACHE, persist_result=False)
def evaluate(trained: dict[str, Any], prepared: dict[str, Any], params: RunParams) -> dict[str, Any]:
    """Test-set accuracy and loss, per-class metrics and the confusion matrix (10 x 10), as small dicts."""
    started = time.perf_counter()
    device = resolve_device(params.device)
    model = load_weights(Path(trained["model_path"]), device)
    data = load_prepared(Path(prepared["path"]), device)
    result = evaluate_model(model, data["test_images"], data["test_labels"], CLASS_NAMES[params.dataset])
    get_run_logger().info("test accuracy %.2f%%, test loss %.4f", 100 * result.accuracy, result.loss)
    return {
        "test_accuracy": result.accuracy,
        "test_loss": result.loss,
        "test_size": len(data["test_labels"]),
        "per_class": result.per_class.to_dict(orient="records"),
        "confusion": result.confusion.values.tolist(),
        "seconds": time.perf_counter() - started,
    }
