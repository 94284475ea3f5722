"""The `mnist` flow: download -> transform -> train -> evaluate -> export. Run `python flows/mnist.py --help`."""

import sys
from collections.abc import Sequence
from typing import Any

from prefect import flow

from mnist_core.cli import parse_params
from mnist_core.config import RunParams
from mnist_core.errors import PipelineError
from tasks import download, evaluate, export, train, transform


@flow(name="mnist", log_prints=True)
def mnist(params: RunParams = RunParams()) -> dict[str, Any]:  # noqa: B008 - pydantic models are immutable here
    """Train and evaluate the MLP on MNIST (or Fashion-MNIST) and export a run folder with report and model."""
    downloaded = download(params.dataset, params.data_dir, params.mirror)
    prepared = transform(downloaded, params)
    trained = train(prepared, params)
    evaluation = evaluate(trained, prepared, params)
    return export(downloaded, prepared, trained, evaluation, params)


def main(argv: Sequence[str] | None = None) -> int:
    params = parse_params(RunParams, argv, description=__doc__)
    try:
        result = mnist(params)
    except PipelineError as error:
        print(f"mnist: error: {error}", file=sys.stderr)
        return 1
    print(f"\nTest accuracy: {result['test_accuracy']:.2%}")
    print(f"Report: {result['report']}")
    print(f"Model:  {result['model']}")
    print(f"Run folder: {result['run_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
