"""`mnist predict` (also `python -m mnist_core predict`): `mnist predict INPUT...` predicts with the champion or any
trained model. Exit status: 0 every input predicted, 1 no model to predict with (none, or a bad model file) or the
CSV could not be written, 2 bad usage, 3 some or all inputs failed (their rows say why; the others are predicted
and written)."""

import os
import sys
from collections.abc import Sequence

from mnist_core.errors import PipelineError
from mnist_core.flags import parse_params
from mnist_core.inference.predict import PredictionBatch, PredictParams, format_table, predict, write_csv

USAGE = (
    "usage: mnist predict INPUT... [--model champion|RUN|FILE] [--threshold P] [--output FILE.csv] "
    "[--show-prepared DIR]  (-h for more)"
)
SOME_FAILED = 3


def main(argv: Sequence[str]) -> int:
    """`mnist predict ARGV`: ARGV are the arguments after `predict`."""
    args = list(argv)
    if not args:
        print(USAGE, file=sys.stderr)
        return 2
    params = parse_params(PredictParams, args, __doc__, prog="mnist predict", positional="inputs")
    try:
        batch = predict(params)
        # The file first: a closed pipe (`| head`) or a broken terminal must not cost the predictions.
        if params.output is not None:
            write_csv(batch.predictions, params.output)
    except (PipelineError, OSError) as error:
        print(f"mnist predict: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # found by a fault battery: a Ctrl-C while the images were read printed a traceback
        print("mnist predict: interrupted (Ctrl-C); no predictions written", file=sys.stderr)
        return 130
    try:
        print_batch(batch, params.threshold)
        if params.output is not None:
            print(f"Wrote {params.output} ({len(batch.predictions)} rows)")
        if params.show_prepared is not None:
            shown = sum(row.error is None for row in batch.predictions)
            print(f"Wrote {shown} prepared 28x28 images (what the model saw) to {params.show_prepared}")
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`| head`): what it did not read is in the CSV, if one was asked for.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except KeyboardInterrupt:
        written = f"; {params.output} was written whole" if params.output is not None else ""
        print(f"mnist predict: interrupted (Ctrl-C) while printing{written}", file=sys.stderr)
        return 130
    return SOME_FAILED if batch.failed else 0


def print_batch(batch: PredictionBatch, threshold: float) -> None:
    model = batch.model
    source = f"run {model.run_id}" if model.run_id else "a model file"
    print(f"Model: {source}, {model.path} ({batch.runtime}, SHA-256 {batch.sha256[:16]}…)\n")
    if len(batch.failed) < len(batch.predictions):  # no table of nothing when every input failed
        print(format_table(batch.predictions))
    total = len(batch.predictions)
    if batch.for_review:
        print(f"\nFor review, confidence below {threshold:.2f}: {len(batch.for_review)} of {total}")
        print(format_table(batch.for_review))
    if batch.failed:
        print(f"\nFailed: {len(batch.failed)} of {total}", file=sys.stderr)
        for row in batch.failed:
            print(f"  {row.error}", file=sys.stderr)
    sys.stdout.flush()
