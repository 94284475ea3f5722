"""The `mnist-predict` flow: batch inference with the champion (or any trained model), written to a CSV."""

if __name__ == "__main__":  # a command line: its arguments are read before torch and Prefect are imported
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project, also from a Python without it
    from launch.cli import run_script

    sys.exit(run_script("predict-batch", sys.argv[1:]))

import sys
from collections.abc import Sequence

from prefect import flow

from launch.local import run_from_command_line
from mnist_core.inference.cli import SOME_FAILED
from mnist_core.inference.predict import PredictParams
from tasks.predict import PredictionSummary, predict_batch


@flow(name="mnist-predict", log_prints=True)
def predict(params: PredictParams) -> PredictionSummary:
    """Predict the class of every input (images, folders, globs, .npy or IDX files) with the chosen model; a bad
    input is a row with its error, never the end of the batch. The CSV goes to `output` (default: under
    <output_dir>/predictions/)."""
    return predict_batch(params)


def main(argv: Sequence[str] | None = None) -> int:
    """`mnist predict-batch ARGS`: the command line's parsing, then `run`."""
    from launch.cli import predict_batch

    return predict_batch(sys.argv[1:] if argv is None else argv)


def run(params: PredictParams) -> int:
    summary, code = run_from_command_line("mnist-predict", lambda: predict(params))
    if summary is None:
        return code
    print(f"\n{summary.count} predictions ({summary.failed} failed, {summary.for_review} for review)")
    print(f"Predictions: {summary.predictions_csv}")
    print(f"Model: {summary.model} (SHA-256 {summary.model_sha256})", flush=True)
    return SOME_FAILED if summary.failed else 0
