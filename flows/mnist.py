"""The `mnist` flow: download -> transform -> train -> evaluate -> export. Run `python flows/mnist.py --help`."""

import sys
from collections.abc import Sequence
from typing import Any

from prefect import flow

from mnist_core.cli import parse_params
from mnist_core.config import RunParams
from mnist_core.errors import PipelineError
from mnist_core.preflight import preflight
from mnist_core.train import checkpoint_lock
from tasks import download, evaluate, export, promote, train, transform


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


def main(argv: Sequence[str] | None = None) -> int:
    params = parse_params(RunParams, argv, description=__doc__)
    try:
        preflight(params)  # here too: fails in a second, before a temporary Prefect server is started
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
