import base64
import socket
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from mnist_core.config import RunParams
from mnist_core.evaluation.evaluate import confusion_frame
from mnist_core.export.run_folder import export_trained, history_frame
from mnist_core.layout import CARD_FILE, EXPORTED_PROGRAM_FILE, ONNX_FILE, PLOT_FILES, REPORT_FILE, WEIGHTS_FILE
from mnist_core.records import Downloaded, Evaluation, Exported, Fingerprint, Prepared, Trained
from mnist_core.redact import redact_url
from mnist_core.registry.artifacts import configured_store, upload_run
from mnist_core.settings import current as current_settings
from reporting.publish import BestEffort


def inline_plots(report: str, run_dir: Path) -> str:
    """The report with its plots as data URIs: the Prefect UI renders a markdown artifact's images inline (checked
    in Chromium by tests/e2e/test_ui.py) but cannot reach the run folder's files, which a browser will not load from
    a file:// URL inside an http:// page anyway."""
    for name in PLOT_FILES:
        path = run_dir / name
        if path.is_file() and f"]({name})" in report:
            encoded = base64.b64encode(path.read_bytes()).decode("ascii")
            report = report.replace(f"]({name})", f"](data:image/png;base64,{encoded})")
    return report


def run_result(exported: Exported) -> dict[str, object]:
    card = exported.card
    return {
        "run_id": card.run_id,
        "best_val_accuracy": card.metrics.best_val_accuracy,
        "test_accuracy": card.metrics.test_accuracy,
        "train_seconds": card.timings.train_seconds,
        # MNIST_WORKER_NAME: set in a worker's environment (its processes inherit it), else this machine's name.
        "worker": current_settings().worker_name or socket.gethostname(),
        "run_dir": str(exported.run_dir),
        # Where another machine (the sweep's) fetches the trial's model from; empty without an artifact store.
        "artifact_store": exported.artifact_store or "",
        "card_sha256": exported.card_sha256 or "",
    }


def publish_artifacts(exported: Exported, trained: Trained, evaluation: Evaluation, publisher: BestEffort) -> None:
    """Stable keys (one per dataset) so the UI shows each artifact's history across runs."""
    dataset, run_dir = exported.card.dataset.name, exported.run_dir
    report = inline_plots(exported.report.read_text(encoding="utf-8"), run_dir)
    epochs = history_frame(trained.history).to_dict(orient="records")
    confusion = confusion_frame(evaluation).reset_index().to_dict(orient="records")
    links = [
        (f"{dataset}-{key}", (run_dir / name).as_uri(), text)
        for key, name, text in (
            ("model", WEIGHTS_FILE, "Model weights (safetensors)"),
            ("onnx", ONNX_FILE, "ONNX model (uint8 images N x 28 x 28 -> logits)"),
            ("pt2", EXPORTED_PROGRAM_FILE, "torch.export program (uint8 images N x 28 x 28 -> logits)"),
            ("report-file", REPORT_FILE, "Report (markdown)"),
            ("model-card", CARD_FILE, "Model card (JSON)"),
        )
        if (run_dir / name).is_file()  # model.pt2 only when the run asked for it
    ]
    # Not the bare path as link text: "[/path]" reads as a Rich closing tag and breaks `prefect artifact ls -o json`.
    links.append((f"{dataset}-run-folder", run_dir.as_uri(), f"Run folder {run_dir}"))
    with publisher.attempt(f"the artifacts of {run_dir}"):
        create_markdown_artifact(key=f"{dataset}-report", markdown=report, description="Run report")
        create_table_artifact(key=f"{dataset}-epoch-metrics", table=epochs, description="Per-epoch metrics")
        create_table_artifact(
            key=f"{dataset}-per-class", table=evaluation.per_class, description="Per-class test metrics"
        )
        create_table_artifact(
            key=f"{dataset}-confusion-matrix",
            table=confusion,
            description="Confusion matrix on the test set (rows: true class, columns: predicted)",
        )
        for key, link, text in links:
            create_link_artifact(key=key, link=link, link_text=text)
        # What a sweep reads back through the API (never through a shared disk) from each of its trials.
        create_table_artifact(
            key=f"{dataset}-run-result", table=[run_result(exported)], description="This run's figures, for a sweep"
        )


@task(name="export", cache_policy=NO_CACHE, persist_result=False)
def export(
    downloaded: Downloaded,
    prepared: Prepared,
    trained: Trained,
    evaluation: Evaluation,
    params: RunParams,
    fingerprint: Fingerprint,
) -> Exported:
    """Write the run folder (once per checkpoint) and publish the artifacts."""
    exported = export_trained(params, downloaded, prepared, trained, evaluation, fingerprint)
    logger = get_run_logger()
    store = configured_store()
    if store is not None:  # before the registry records the run: it then names only objects the store holds
        exported = upload_run(store, exported)
        logger.info("model files uploaded to %s (card %s)", redact_url(store.url), exported.card_sha256)
    publish_artifacts(exported, trained, evaluation, BestEffort(logger))
    logger.info("run folder: %s", exported.run_dir)
    return exported
