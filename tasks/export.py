import json
import time
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from mnist_core import export as files_of
from mnist_core.config import RunParams
from mnist_core.evaluate import CLASS_NAMES, confusion_frame
from mnist_core.export import build_model_card, export_run, new_run_id
from mnist_core.files import atomic_write_text
from mnist_core.model import load_weights


def publish_artifacts(dataset: str, run_dir: Path, history: pd.DataFrame, per_class: pd.DataFrame,
                      confusion: pd.DataFrame) -> None:  # fmt: skip
    """Stable keys (one per dataset) so the UI shows each artifact's history across runs."""
    create_markdown_artifact(
        key=f"{dataset}-report",
        markdown=(run_dir / files_of.REPORT_FILE).read_text(encoding="utf-8"),
        description="Run report",
    )
    create_table_artifact(
        key=f"{dataset}-epoch-metrics", table=history.to_dict(orient="records"), description="Per-epoch metrics"
    )
    create_table_artifact(
        key=f"{dataset}-per-class", table=per_class.to_dict(orient="records"), description="Per-class test metrics"
    )
    create_table_artifact(
        key=f"{dataset}-confusion-matrix",
        table=confusion.reset_index().to_dict(orient="records"),
        description="Confusion matrix on the test set (rows: true class, columns: predicted)",
    )
    for key, name, text in (
        ("model", files_of.MODEL_FILE, "Model weights (safetensors)"),
        ("torchscript", files_of.TORCHSCRIPT_FILE, "TorchScript model"),
        ("report-file", files_of.REPORT_FILE, "Report (markdown)"),
        ("model-card", files_of.CARD_FILE, "Model card (JSON)"),
    ):
        create_link_artifact(key=f"{dataset}-{key}", link=(run_dir / name).as_uri(), link_text=text)
    # Not the bare path as link text: "[/path]" reads as a Rich closing tag and breaks `prefect artifact ls -o json`.
    create_link_artifact(key=f"{dataset}-run-folder", link=run_dir.as_uri(), link_text=f"Run folder {run_dir}")


@task(name="export", cache_policy=NO_CACHE, persist_result=False)
def export(
    downloaded: dict[str, Any],
    prepared: dict[str, Any],
    trained: dict[str, Any],
    evaluation: dict[str, Any],
    params: RunParams,
) -> dict[str, Any]:
    """Write the run folder (once per checkpoint) and publish the artifacts."""
    started = time.perf_counter()
    history = pd.DataFrame(trained["history"])
    names = CLASS_NAMES[params.dataset]
    per_class = pd.DataFrame(evaluation["per_class"])
    confusion = confusion_frame(evaluation["confusion"], names)
    stage_seconds = {
        "download": downloaded["seconds"],
        "transform": prepared["seconds"],
        "train": trained["seconds"],
        "evaluate": evaluation["seconds"],
    }
    card = build_model_card(params, downloaded["files"], trained, evaluation, history, stage_seconds)
    # A rerun after a later stage failed finds the run folder this checkpoint already produced, and reuses it.
    exported_marker = Path(trained["work_dir"]) / "exported.json"
    earlier = json.loads(exported_marker.read_text()) if exported_marker.is_file() else {}
    if earlier and Path(earlier["run_dir"]).is_dir():
        run_id, run_dir = earlier["run_id"], Path(earlier["run_dir"])
    else:
        model = load_weights(Path(trained["model_path"]))
        run_id = new_run_id(params.training_digest())
        run_dir = export_run(Path(params.output_dir), run_id, model, history, per_class, confusion, card)
        atomic_write_text(exported_marker, json.dumps({"run_id": run_id, "run_dir": str(run_dir)}))
    publish_artifacts(params.dataset, run_dir, history, per_class, confusion)
    get_run_logger().info("run folder: %s", run_dir)
    return {
        "run_id": run_id,
        "run_dir": str(run_dir),
        "report": str(run_dir / files_of.REPORT_FILE),
        "model": str(run_dir / files_of.MODEL_FILE),
        "model_card": str(run_dir / files_of.CARD_FILE),
        "test_accuracy": evaluation["test_accuracy"],
        "seconds": time.perf_counter() - started,
    }
