import time
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from mnist_core.config import RunParams
from mnist_core.prepare import prepare_dataset


@task(name="transform", cache_policy=NO_CACHE, persist_result=False)
def transform(downloaded: dict[str, Any], params: RunParams) -> dict[str, Any]:
    """Path of the validated, split uint8 tensors (built once, then reused)."""
    started = time.perf_counter()
    path = prepare_dataset(downloaded["files"], Path(params.data_dir), params.dataset, params.val_size, params.seed)
    return {"path": str(path), "seconds": time.perf_counter() - started}
