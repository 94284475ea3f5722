"""The `mnist-predict` flow: batch inference with the champion (or any trained model), written to a CSV."""

import flows.entry  # noqa: F401 - first: a Ctrl-C during the imports below exits quietly
import flows.telemetry  # noqa: F401 - before Prefect is imported

# isort: split
import sys
from collections.abc import Sequence

from prefect import flow

from flows.local import run_from_command_line
from mnist_core.cli import parse_params
from mnist_core.predict import PredictParams
from tasks.predict import PredictionSummary, predict_batch


@flow(name="mnist-predict", log_prints=True)
def predict(params: PredictParams) -> PredictionSummary:
    """Predict the class of every input (images, folders, globs, .npy or IDX files) with the chosen model; a bad
    input is a row with its error, never the end of the batch. The CSV goes to `output` (default: under
    <output_dir>/predictions/)."""
    return predict_batch(params)


def main(argv: Sequence[str] | None = None) -> int:
    params = parse_params(PredictParams, argv, __doc__, positional="inputs")
    summary, code = run_from_command_line("mnist-predict", lambda: predict(params))
    if summary is None:
        return code
    print(f"\n{summary.count} predictions ({summary.failed} failed, {summary.for_review} for review)")
    print(f"Predictions: {summary.predictions_csv}")
    print(f"Model: {summary.model} (SHA-256 {summary.model_sha256})", flush=True)
    return 3 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
