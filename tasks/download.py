from pathlib import Path
from typing import Any

from prefect import State, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from mnist_core.data.download import download_dataset
from mnist_core.errors import DownloadError
from mnist_core.records import Downloaded
from reporting.terminal import download_bar


def _may_be_transient(task: Any, task_run: Any, state: State) -> bool:
    """Every mirror failing may be a passing network fault; an unknown dataset is not."""
    return isinstance(state.result(raise_on_failure=False), DownloadError)


@task(
    name="download",
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=_may_be_transient,
    cache_policy=NO_CACHE,
    persist_result=False,
)
def download(dataset: str, data_dir: Path, mirrors: list[str]) -> Downloaded:
    """The dataset's four verified IDX files in the cache."""
    with download_bar() as on_bytes:
        downloaded = download_dataset(dataset, data_dir, mirrors, on_bytes)
    logger = get_run_logger()
    for role, file in downloaded.files.items():
        logger.info("%s: %s (from %s)", role, file.path, file.source)
    return downloaded
