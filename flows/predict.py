"""The `mnist-predict` flow: batch inference with the champion (or any trained model), written to a CSV."""

if __name__ == "__main__":  # a command line: its arguments are read before torch and Prefect are imported
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project, also from a Python without it
    from launch.cli import run_script

    sys.exit(run_script("predict-batch", sys.argv[1:]))

from prefect import flow

from mnist_core.inference.predict import PredictParams
from tasks.predict import PredictionSummary, predict_batch


@flow(name="mnist-predict", log_prints=True)
def predict(params: PredictParams) -> PredictionSummary:
    """Predict the class of every input (images, folders, globs, .npy or IDX files) with the chosen model; a bad
    input is a row with its error, never the end of the batch. The CSV goes to `output` (default: under
    <output_dir>/predictions/)."""
    return predict_batch(params)
