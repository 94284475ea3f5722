import time

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from mnist_core.config import RunParams
from mnist_core.data.extra import scan_extra
from mnist_core.data.not_digits import prepare_outliers
from mnist_core.data.prepare import prepare_dataset
from mnist_core.records import Downloaded, Prepared


@task(name="transform", cache_policy=NO_CACHE, persist_result=False)
def transform(downloaded: Downloaded, params: RunParams) -> Prepared:
    """The validated, split uint8 tensors, with the extra images if any (built once, then reused)."""
    extra = scan_extra(params.extra_data, params.dataset) if params.extra_data else None
    # Corrections are all trained on: the run learning from them has already held its newest back (tasks/corrections).
    prepared = prepare_dataset(downloaded, params.data_dir, params.val_size, params.seed, extra, params.extra_repeat,
                               extra_all_train=params.corrections)  # fmt: skip
    if extra:
        sizes = prepared.sizes
        get_run_logger().info(
            "extra images from %s: %d files (manifest SHA-256 %s): %d for training, %d for validation, %d for testing, "
            "%d not of the classes (outliers)",
            extra.root,
            len(extra.manifest),
            extra.sha256[:16],
            sizes["extra_train"],
            sizes["extra_val"],
            sizes["extra_test"],
            sizes.get("extra_outliers", 0),
        )
    if params.outlier_exposure > 0 and params.outlier_images > 0:
        started = time.perf_counter()
        outliers = prepare_outliers(params.data_dir, params.dataset, params.outlier_images)
        get_run_logger().info(
            "%d outlier images (not digits) for outlier exposure: %s (%.1f s)",
            params.outlier_images,
            outliers.name,
            time.perf_counter() - started,
        )
        prepared = prepared.model_copy(update={"outliers": outliers})
    return prepared
