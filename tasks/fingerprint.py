from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from mnist_core.config import RunParams
from mnist_core.fingerprint import code_digest, run_fingerprint
from mnist_core.records import Downloaded, Fingerprint, Prepared
from mnist_core.registry.store import unchanged_since


@task(name="fingerprint", cache_policy=NO_CACHE, persist_result=False)
def fingerprint(downloaded: Downloaded, prepared: Prepared, params: RunParams) -> Fingerprint:
    """What determines this run's model, and whether the champion (or a run since) was trained from the same."""
    code = code_digest()
    value = run_fingerprint(downloaded.sha256, prepared.extra_sha256, params.training_digest(), code)
    since = unchanged_since(params.output_dir, params.dataset, value)
    get_run_logger().info(
        "fingerprint %s (code %s)%s", value[:16], code[:16], f": the same as run {since}'s" if since else ""
    )
    return Fingerprint(value=value, code_digest=code, unchanged_since=since)
