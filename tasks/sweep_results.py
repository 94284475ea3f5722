"""What a sweep concludes: its best trial (by validation accuracy) as a run the champion rule can judge, and the
artifacts that show every trial."""

import json
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from mnist_core.errors import PipelineError
from mnist_core.records import Exported, Promotion, read_card
from mnist_core.registry.artifacts import cache_root, local_run_folder
from mnist_core.sweep import SweepParams, ranked
from reporting.publish import BestEffort


@task(name="best-trial", cache_policy=NO_CACHE, persist_result=False)
def best_trial(rows: list[dict[str, Any]], output_dir: Path) -> Exported | None:
    """The best trial's run folder as export left it (fetched from the artifact store into `output_dir`'s cache
    when the trial ran on another machine), or None: no trial completed, or its model cannot be had here."""
    logger = get_run_logger()
    scored = [row for row in ranked(rows) if row["val_accuracy"] is not None]
    if not scored:
        logger.warning("no trial completed: nothing to offer for promotion")
        return None
    best = scored[0]
    run_dir, store, card_sha256 = Path(best["run_dir"]), best.get("artifact_store"), best.get("card_sha256")
    try:
        # Its run folder when this machine sees it, else its files from the artifact store (checked by SHA-256).
        folder = local_run_folder(run_dir, store, card_sha256, cache_root(output_dir))
        card = read_card(folder)
    except (PipelineError, OSError, ValueError) as error:
        logger.warning(
            "the best trial's model cannot be read here (%s): set MNIST_ARTIFACT_STORE on the workers (or share "
            "output_dir) to promote trials trained on another machine",
            error,
        )
        return None
    # Recorded where it lives (its machine's run folder); other machines fetch it by the store and the card's hash.
    exported = Exported.in_folder(run_dir, card)
    return exported.model_copy(update={"artifact_store": store, "card_sha256": card_sha256})


def summary_markdown(rows: list[dict[str, Any]], params: SweepParams, promotion: Promotion | None, mode: str) -> str:
    table = ranked(rows)
    best = next((row for row in table if row["val_accuracy"] is not None), None)
    failed = [row for row in table if row["state"] != "COMPLETED"]
    lines = [f"# Sweep: {len(rows)} trials ({mode}), {len(failed)} not completed", ""]
    if best is None:
        lines.append("No trial completed.")
    else:
        lines += [
            f"**Best trial {best['trial']}** (by validation accuracy {best['val_accuracy']:.2%}; test accuracy "
            f"{best['test_accuracy']:.2%}): `{best['params']}`, run `{Path(best['run_dir']).name}` "
            f"on {best['worker']}.",
        ]
    decision = promotion.reason if promotion else "not offered (see the log)" if params.promote_best else "off"
    lines += [
        "",
        f"**Promotion of the best trial:** {decision}",
        "",
        "| rank | trial | state | params | val acc | test acc | seconds | worker |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in table:
        val = "-" if row["val_accuracy"] is None else f"{row['val_accuracy']:.2%}"
        test = "-" if row["test_accuracy"] is None else f"{row['test_accuracy']:.2%}"
        seconds = "-" if row["train_seconds"] is None else f"{row['train_seconds']:.1f}"
        lines.append(
            f"| {row['rank']} | {row['trial']} | {row['state']} | `{row['params']}` | {val} | {test} | "
            f"{seconds} | {row['worker'] or '-'} |"
        )
    if failed:
        lines += [
            "",
            "## Not completed",
            *[f"- trial {row['trial']}: {row['state']}: {row['error']}" for row in failed],
        ]
    return "\n".join(lines) + "\n"


@task(name="publish-sweep", cache_policy=NO_CACHE, persist_result=False)
def publish_sweep(rows: list[dict[str, Any]], params: SweepParams, promotion: Promotion | None, mode: str) -> dict:
    """The trials table and the summary as artifacts; returns the summary as a small dict."""
    logger = get_run_logger()
    markdown = summary_markdown(rows, params, promotion, mode)
    with BestEffort(logger).attempt("the sweep's artifacts"):
        create_table_artifact(key="mnist-sweep-trials", table=ranked(rows), description="Every trial, best first")
        create_markdown_artifact(key="mnist-sweep-summary", markdown=markdown, description="Sweep summary")
    table = ranked(rows)
    best = next((row for row in table if row["val_accuracy"] is not None), None)
    summary = {
        "trials": len(rows),
        "completed": sum(row["state"] == "COMPLETED" for row in rows),
        "best": best,
        "promotion": promotion.reason if promotion else None,
        "ranked": [{key: row[key] for key in ("rank", "trial", "state", "val_accuracy", "worker")} for row in table],
    }
    logger.info("%s", json.dumps({key: summary[key] for key in ("trials", "completed", "promotion")}))
    return summary
