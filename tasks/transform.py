from prefect import task
from prefect.cache_policies import NO_CACHE

from mnist_core.config import RunParams
from mnist_core.prepare import prepare_dataset
from mnist_core.records import Downloaded, Prepared


@task(name="transform", cache_policy=NO_CACHE, persist_result=False)
def transform(downloaded: Downloaded, params: RunParams) -> Prepared:
    """The validated, split uint8 tensors (built once, then reused)."""
    return prepare_dataset(downloaded, params.data_dir, params.val_size, params.seed)
