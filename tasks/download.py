import time
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from mnist_core.download import download_dataset


# Retries here only: fetching is the one stage whose failures can be transient.
@task(name="download", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE, persist_result=False)
def download(dataset: str, data_dir: Path, mirrors: list[str]) -> dict[str, Any]:
    """The dataset's four verified IDX files in the cache: per role, path, sha256 and source."""
    started = time.perf_counter()
    files = download_dataset(dataset, data_dir, mirrors)
    logger = get_run_logger()
    for role, entry in files.items():
        logger.info("%s: %s (from %s)", role, entry["path"], entry["source"])
    return {"files": files, "seconds": time.perf_counter() - started}
