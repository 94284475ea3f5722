"""The batch-inference task: predictions for every input, a CSV, and artifacts that say which model made them."""

import secrets
import time
from dataclasses import asdict
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from mnist_core.inference.predict import PredictionBatch, PredictParams, class_counts, predict, write_csv
from mnist_core.records import Record
from mnist_core.stamps import utc_compact
from reporting.publish import BestEffort

TABLE_ROWS = 100  # the table artifact shows the first rows; the CSV has them all
LOGGED_FAILURES = 20  # one log line each (an API call each on a worker); the CSV lists every one


class PredictionSummary(Record):
    """What the batch-inference flow returns: where the predictions are, and which model made them."""

    predictions_csv: Path
    model: Path
    model_run_id: str | None
    model_sha256: str
    runtime: str
    count: int
    failed: int
    for_review: int
    per_class: dict[str, int]
    seconds: dict[str, float]


def default_output(params: PredictParams) -> Path:
    # The time for people, a random suffix so that two batches started in the same second never share a file.
    name = utc_compact() + f"-{secrets.token_hex(3)}.csv"
    return Path(params.output_dir).expanduser() / "predictions" / name


def summary_markdown(summary: PredictionSummary, threshold: float, batch: PredictionBatch) -> str:
    slowest = max(summary.seconds, key=summary.seconds.__getitem__)
    lines = [
        f"# Predictions: {summary.count} inputs",
        "",
        f"- model: run `{summary.model_run_id or 'none (a model file)'}`, `{summary.model}` ({summary.runtime})",
        f"- model SHA-256: `{summary.model_sha256}`",
        f"- predictions: `{summary.predictions_csv}`",
        f"- below the confidence threshold {threshold:.2f} (for review): {summary.for_review}",
        f"- failed inputs: {summary.failed}",
        f"- slowest part: {slowest}, {summary.seconds[slowest]:.3f} s "
        f"({', '.join(f'{part} {seconds:.3f} s' for part, seconds in summary.seconds.items())})",
        "",
        "| class | count |",
        "|---|---|",
        *[f"| {name} | {count} |" for name, count in summary.per_class.items()],
    ]
    if batch.failed:
        lines += ["", "## Failed inputs", *[f"- {row.error}" for row in batch.failed[:TABLE_ROWS]]]
    return "\n".join(lines) + "\n"


@task(name="predict", cache_policy=NO_CACHE, persist_result=False)
def predict_batch(params: PredictParams) -> PredictionSummary:
    """Predict every input with the chosen model, write the CSV, publish the artifacts."""
    logger = get_run_logger()
    batch = predict(params)
    output = Path(params.output or default_output(params)).expanduser().resolve()
    started = time.perf_counter()
    write_csv(batch.predictions, output, make_folder=params.output is None)
    summary = PredictionSummary(
        predictions_csv=output,
        model=batch.model.path.resolve(),
        model_run_id=batch.model.run_id,
        model_sha256=batch.sha256,
        runtime=batch.runtime,
        count=len(batch.predictions),
        failed=len(batch.failed),
        for_review=len(batch.for_review),
        per_class=class_counts(batch.predictions, batch.model.class_names),
        seconds={**batch.seconds, "write the CSV": time.perf_counter() - started},
    )
    logger.info("model %s (%s, SHA-256 %s)", summary.model, summary.runtime, summary.model_sha256)
    for row in batch.failed[:LOGGED_FAILURES]:
        logger.warning("%s", row.error)
    if len(batch.failed) > LOGGED_FAILURES:
        logger.warning("... and %d more failed inputs: see the CSV", len(batch.failed) - LOGGED_FAILURES)
    logger.info(
        "%d predictions, %d failed, %d for review: %s", summary.count, summary.failed, summary.for_review, output
    )
    dataset = batch.model.dataset
    with BestEffort(logger).attempt("the prediction artifacts"):
        rows = [asdict(row) for row in batch.predictions[:TABLE_ROWS]]
        create_table_artifact(
            key=f"{dataset}-predictions", table=rows, description=f"The first {TABLE_ROWS} predictions"
        )
        create_markdown_artifact(
            key=f"{dataset}-prediction-summary",
            markdown=summary_markdown(summary, params.threshold, batch),
            description="Batch inference summary",
        )
        create_link_artifact(key=f"{dataset}-predictions-csv", link=output.as_uri(), link_text=f"Predictions {output}")
    return summary
