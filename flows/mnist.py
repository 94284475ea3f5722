"""The `mnist` flow: download -> transform -> train -> evaluate -> export. Run `python flows/mnist.py --help`."""

import sys
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from prefect import flow
from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, temporary_settings
from prefect.settings.models.server.ephemeral import ServerEphemeralSettings

from mnist_core.cli import parse_params
from mnist_core.config import RunParams
from mnist_core.errors import PipelineError
from mnist_core.preflight import preflight
from mnist_core.train import checkpoint_lock
from tasks import download, evaluate, export, promote, train, transform

# Prefect's temporary server is given 20 s to answer. Its first start creates and migrates a new database, which on a
# busy 2-core machine took longer (a CI run failed at exactly 20 s), so the command line waits longer unless told to.
TEMPORARY_SERVER_STARTUP_S = 120


@flow(name="mnist", log_prints=True)
def mnist(params: RunParams = RunParams()) -> dict[str, Any]:  # noqa: B008 - pydantic models are immutable here
    """Train and evaluate the MLP on MNIST (or Fashion-MNIST), export a run folder with report and model, and
    promote the model to champion if it beats the current one."""
    preflight(params)
    downloaded = download(params.dataset, params.data_dir, params.mirror)
    prepared = transform(downloaded, params)
    with checkpoint_lock(params):  # the checkpoint is kept until the run has completed, for a rerun to resume
        trained = train(prepared, params)
        evaluation = evaluate(trained, prepared, params)
        exported = export(downloaded, prepared, trained, evaluation, params)
        decision = promote(exported, prepared, params)
    return {**exported, **decision}


def temporary_server_patience() -> AbstractContextManager[object]:
    """Raise the temporary server's start-up timeout, unless the user has set one (env, profile or prefect.toml)."""
    prefect_default = ServerEphemeralSettings.model_fields["startup_timeout_seconds"].default
    if PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value() != prefect_default:
        return nullcontext()
    return temporary_settings({PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: TEMPORARY_SERVER_STARTUP_S})


def main(argv: Sequence[str] | None = None) -> int:
    params = parse_params(RunParams, argv, description=__doc__)
    try:
        preflight(params)  # here too: fails in a second, before a temporary Prefect server is started
        with temporary_server_patience():
            result = mnist(params)
    except (PipelineError, OSError) as error:  # OSError: the environment (disk, permissions), not a bug to trace
        print(f"mnist: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("mnist: interrupted; rerun the same command to resume from the last checkpoint", file=sys.stderr)
        return 130
    print(f"\nTest accuracy: {result['test_accuracy']:.2%}")
    print(f"Report: {result['report']}")
    print(f"Model:  {result['model']}")
    print(f"Run folder: {result['run_dir']}")
    print(f"Champion: {result['decision_reason']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
