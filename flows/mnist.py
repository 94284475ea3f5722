"""The `mnist` flow: download -> transform -> train -> evaluate -> export -> promote.
Run `python flows/mnist.py --help`."""

import sys
from collections.abc import Sequence

from prefect import flow
from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, temporary_settings

from mnist_core.checkpoint import checkpoint_lock, discard_checkpoint
from mnist_core.cli import parse_params
from mnist_core.config import RunParams
from mnist_core.errors import PipelineError
from mnist_core.preflight import preflight
from mnist_core.records import RunResult
from tasks import download, evaluate, export, promote, train, transform

# Prefect's temporary server is given 20 s to answer. Its first start creates and migrates a new database, which on a
# busy 2-core machine took longer (a CI run failed at exactly 20 s), so the command line waits longer unless told to.
TEMPORARY_SERVER_STARTUP_S = 120


@flow(name="mnist", log_prints=True)
def mnist(params: RunParams = RunParams()) -> RunResult:  # noqa: B008 - pydantic models are immutable here
    """Train and evaluate the MLP on MNIST (or Fashion-MNIST), export a run folder with report and model, and
    promote the model to champion if it beats the current one."""
    device = str(preflight(params))
    downloaded = download(params.dataset, params.data_dir, params.mirror)
    prepared = transform(downloaded, params)
    with checkpoint_lock(params):
        trained = train(prepared, params, device)
        evaluation = evaluate(trained, prepared, device)
        exported = export(downloaded, prepared, trained, evaluation, params)
        promotion = promote(exported, prepared, params, device)
        # Only a completed run gets here: after a failure the checkpoint stays, for a rerun to resume from.
        discard_checkpoint(params)
    return RunResult(exported=exported, promotion=promotion)


def main(argv: Sequence[str] | None = None) -> int:
    params = parse_params(RunParams, argv, description=__doc__)
    try:
        # Checked here too (the flow checks again, for deployments): a bad folder or device fails in a second,
        # before a temporary Prefect server is started.
        preflight(params)
        # A default only: a value the user set (environment, profile or prefect.toml) wins.
        patience = {PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: TEMPORARY_SERVER_STARTUP_S}
        with temporary_settings(set_defaults=patience):
            result = mnist(params)
    except (PipelineError, OSError) as error:  # OSError: the environment (disk, permissions), not a bug to trace
        print(f"mnist: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("mnist: interrupted; rerun the same command to resume from the last checkpoint", file=sys.stderr)
        return 130
    card = result.exported.card
    print(f"\nTest accuracy: {card.metrics.test_accuracy:.2%}")
    print(f"Report: {result.exported.report}")
    print(f"Model:  {result.exported.model}")
    print(f"Run folder: {result.exported.run_dir}")
    print(f"Champion: {result.promotion.reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
