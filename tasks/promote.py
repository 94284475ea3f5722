import json
import time
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from mnist_core.config import RunParams
from mnist_core.device import resolve_device
from mnist_core.evaluate import CLASS_NAMES
from mnist_core.files import atomic_write_text
from mnist_core.prepare import load_prepared
from mnist_core.registry import champion_accuracy_on, promotion_markdown, record_run


@task(name="promote", cache_policy=NO_CACHE, persist_result=False)
def promote(exported: dict[str, Any], prepared: dict[str, Any], params: RunParams) -> dict[str, Any]:
    """Record the run in the registry and make it champion if it beats the current one on the same test set."""
    started = time.perf_counter()
    card = json.loads(Path(exported["model_card"]).read_text(encoding="utf-8"))
    device = resolve_device(params.device)
    data = load_prepared(Path(prepared["path"]), device)
    scorer = champion_accuracy_on(data["test_images"], data["test_labels"], CLASS_NAMES[params.dataset], device)
    run = {
        "run_id": exported["run_id"],
        "dataset": params.dataset,
        "params_digest": card["training_digest"],
        "sha256": card["dataset"]["sha256"],
        "best_val_accuracy": card["metrics"]["best_val_accuracy"],
        "best_val_loss": card["metrics"]["best_val_loss"],
        "test_accuracy": card["metrics"]["test_accuracy"],
        "test_loss": card["metrics"]["test_loss"],
        "run_dir": exported["run_dir"],
        "model": exported["model"],
    }
    decision = record_run(Path(params.output_dir), run, params.promotion_margin, params.force_promote, scorer)
    section = promotion_markdown(decision, params.dataset)
    # The run folder's report gains the decision; written atomically so the report is never half-updated.
    report = Path(exported["report"])
    text = report.read_text(encoding="utf-8")
    if section not in text:  # a retried promotion must not append the section twice
        atomic_write_text(report, text.rstrip("\n") + "\n\n" + section)
    create_markdown_artifact(key=f"{params.dataset}-promotion", markdown=section, description="Promotion decision")
    get_run_logger().info("%s", decision.reason)
    return {
        "promoted": decision.promoted,
        "decision": decision.kind,
        "decision_reason": decision.reason,
        # From the decision, not a re-read of the pointer: another run may have been promoted since.
        "champion_run_id": exported["run_id"] if decision.promoted else decision.champion_run_id,
        "promote_seconds": time.perf_counter() - started,
    }
