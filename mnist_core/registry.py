"""Run registry and champion/challenger promotion for an output root.

Layout under the output root:
- `registry.csv`: one row per recorded run (read it with `read_registry` or `pandas.read_csv`).
- `champion-<dataset>.json`: the current champion of each dataset, replaced atomically with `os.replace`.
- `.registry.lock`: held with `fcntl.flock` while a run compares itself with the champion and records itself, so
  concurrent runs serialize: they cannot both win, and neither can lose the other's registry row.

flock works across processes on one machine (and on local disks); an output root shared between machines needs a
filesystem whose locks span machines.
"""

import csv
import dataclasses
import io
import json
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from mnist_core.download import ROLES as DATA_ROLES
from mnist_core.errors import PipelineError
from mnist_core.files import atomic_write_text, exclusive_lock, temp_files_glob

REGISTRY_FILE = "registry.csv"
LOCK_FILE = ".registry.lock"
# Accuracies are counts over the test-set size; this only absorbs float rounding in `challenger - champion`.
TOLERANCE = 1e-9
COLUMNS = [
    "run_id",
    "recorded_at",
    "dataset",
    "params_digest",
    *[f"sha256_{role}" for role in DATA_ROLES],
    "best_val_accuracy",
    "best_val_loss",
    "test_accuracy",
    "test_loss",
    "margin",
    "champion_run_id",
    "champion_test_accuracy",
    "decision",
    "promoted",
    "reason",
    "run_dir",
]


@dataclass(frozen=True)
class Decision:
    """The outcome of comparing a run (challenger) with the champion. `kind`: first, better, forced, replaced
    (the champion could not be evaluated) or kept."""

    promoted: bool
    kind: str
    reason: str
    challenger_accuracy: float
    champion_accuracy: float | None
    champion_run_id: str | None
    margin: float


def decide(
    challenger_accuracy: float,
    champion_accuracy: float | None,
    margin: float,
    force: bool = False,
    champion_run_id: str | None = None,
) -> Decision:
    """The promotion rule: promote if forced, if there is no champion, or if the challenger's test accuracy is
    strictly higher than the champion's and higher by at least `margin` (a fraction: 0.001 = 0.1 points).
    A tie keeps the champion, so retraining with the same result does not churn the pointer."""
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    challenger = f"{challenger_accuracy:.2%}"

    def make(promoted: bool, kind: str, reason: str) -> Decision:
        return Decision(promoted, kind, reason, challenger_accuracy, champion_accuracy, champion_run_id, margin)

    if champion_accuracy is None:
        forced = " (promotion was also forced)" if force else ""
        return make(
            True, "first", f"no champion yet: this run becomes champion with test accuracy {challenger}{forced}."
        )
    champion = f"{champion_accuracy:.2%}"
    difference = challenger_accuracy - champion_accuracy
    figures = (
        f"test accuracy {challenger} vs champion {champion_run_id}'s {champion} on the same test set "
        f"(difference {100 * difference:+.2f} points, margin {100 * margin:.2f} points)"
    )
    if force:
        return make(True, "forced", f"promotion forced (force_promote): {figures}.")
    if difference > 0 and difference + TOLERANCE >= margin:
        return make(True, "better", f"promoted: {figures}.")
    return make(False, "kept", f"champion {champion_run_id} stays: {figures}; the run is not better by the margin.")


def champion_path(output_root: Path, dataset: str) -> Path:
    return Path(output_root) / f"champion-{dataset}.json"


def read_champion(output_root: Path, dataset: str) -> dict[str, Any] | None:
    """The champion pointer of `dataset`, or None when there is none yet."""
    path = champion_path(output_root, dataset)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


def _registry_text(output_root: Path) -> str:
    path = Path(output_root) / REGISTRY_FILE
    return path.read_text(encoding="utf-8") if path.is_file() else ""


def _parse_registry(text: str) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(text)) if text else pd.DataFrame(columns=COLUMNS)


def read_registry(output_root: Path) -> pd.DataFrame:
    """Every recorded run, oldest first (an empty frame with the registry's columns if none yet)."""
    return _parse_registry(_registry_text(output_root))


def registry_lock(output_root: Path) -> AbstractContextManager[None]:
    """Exclusive lock over the registry and champion pointers of `output_root` (released if the process dies)."""
    return exclusive_lock(Path(output_root) / LOCK_FILE)


def _remove_stale_temp_files(root: Path) -> None:
    # Only called under the lock, so any temp file left here belongs to a writer that crashed.
    for stale in [*root.glob(temp_files_glob(REGISTRY_FILE)), *root.glob(temp_files_glob("champion-*.json"))]:
        stale.unlink(missing_ok=True)


def _append_row(root: Path, existing: str, row: dict[str, Any]) -> None:
    """Write the registry as `existing` (its current text, read under the lock) plus `row`."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    if not existing:
        writer.writeheader()
    writer.writerow({column: row.get(column, "") for column in COLUMNS})
    atomic_write_text(root / REGISTRY_FILE, existing + buffer.getvalue())


def record_run(
    output_root: Path,
    run: dict[str, Any],
    margin: float,
    force: bool,
    champion_accuracy: Callable[[dict[str, Any]], float],
) -> Decision:
    """Compare `run` with its dataset's champion, promote it if the rule says so, and append it to the registry.

    `run` needs: run_id, dataset, params_digest, sha256 (role -> digest), best_val_accuracy, best_val_loss,
    test_accuracy, test_loss, run_dir, model. `champion_accuracy(pointer)` scores the champion's model on the
    run's own test set; if it raises, the champion is unusable (e.g. its folder was deleted) and the run replaces it.

    The pointer is replaced before the registry row is written: a crash before the replace leaves the old
    champion and registry untouched; a crash between the two leaves a valid champion whose row is missing.
    """
    root = Path(output_root).expanduser().resolve()
    dataset = run["dataset"]
    with registry_lock(root):
        _remove_stale_temp_files(root)
        existing = _registry_text(root)
        recorded = _parse_registry(existing)
        earlier = recorded.loc[recorded["run_id"] == run["run_id"]]
        if len(earlier):  # a retried promotion: the first attempt's decision stands, recorded once
            return _decision_from_row(earlier.iloc[-1])
        champion = read_champion(root, dataset)
        score: float | None = None
        note = ""
        if champion is not None:
            try:
                score = float(champion_accuracy(champion))
            except PipelineError as error:  # missing or corrupt; other OSErrors (permissions) fail the run
                note = f" ({champion.get('run_id')} could not be evaluated: {error})"
        decision = decide(
            float(run["test_accuracy"]),
            score,
            margin,
            force,
            champion_run_id=champion.get("run_id") if champion and score is not None else None,
        )
        if note:
            reason = f"the run replaces an unusable champion{note}: test accuracy {decision.challenger_accuracy:.2%}."
            decision = dataclasses.replace(decision, kind="replaced", reason=reason)
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        if decision.promoted:
            pointer = {
                "dataset": dataset,
                "run_id": run["run_id"],
                "run_dir": str(run["run_dir"]),
                "model": str(run["model"]),
                "test_accuracy": float(run["test_accuracy"]),
                "sha256": dict(run["sha256"]),
                "promoted_at": now,
                "decision": decision.kind,
                "previous_run_id": champion.get("run_id") if champion else None,
            }
            atomic_write_text(champion_path(root, dataset), json.dumps(pointer, indent=2) + "\n")
        row = {
            "run_id": run["run_id"],
            "recorded_at": now,
            "dataset": dataset,
            "params_digest": run["params_digest"],
            **{f"sha256_{role}": run["sha256"].get(role, "") for role in DATA_ROLES},
            "best_val_accuracy": run["best_val_accuracy"],
            "best_val_loss": run["best_val_loss"],
            "test_accuracy": run["test_accuracy"],
            "test_loss": run["test_loss"],
            "margin": margin,
            "champion_run_id": decision.champion_run_id or "",
            "champion_test_accuracy": "" if decision.champion_accuracy is None else decision.champion_accuracy,
            "decision": decision.kind,
            "promoted": decision.promoted,
            "reason": decision.reason,
            "run_dir": str(run["run_dir"]),
        }
        _append_row(root, existing, row)
    return decision


def _decision_from_row(row: pd.Series) -> Decision:
    def optional(value: Any) -> Any:
        return None if pd.isna(value) or value == "" else value

    champion_accuracy = optional(row["champion_test_accuracy"])
    return Decision(
        promoted=str(row["promoted"]).lower() == "true",
        kind=str(row["decision"]),
        reason=str(row["reason"]),
        challenger_accuracy=float(row["test_accuracy"]),
        champion_accuracy=None if champion_accuracy is None else float(champion_accuracy),
        champion_run_id=optional(row["champion_run_id"]),
        margin=float(row["margin"]),
    )


def champion_accuracy_on(
    test_images: Any, test_labels: Any, class_names: list[str], device: Any = "cpu"
) -> Callable[[dict[str, Any]], float]:
    """A scorer for `record_run`: the champion's saved model re-evaluated on the given test tensors, so both
    figures come from the same images rather than from a number stored when the champion was trained."""
    from mnist_core.evaluate import evaluate_model
    from mnist_core.model import load_weights

    def score(champion: dict[str, Any]) -> float:
        model = load_weights(Path(champion["model"]), device)
        return evaluate_model(model, test_images, test_labels, class_names).accuracy

    return score


def promotion_markdown(decision: Decision, dataset: str) -> str:
    """The report section (and artifact) that says what happened to the champion and why."""
    verdict = {
        "first": "promoted (first champion)",
        "better": "promoted (better than the champion)",
        "forced": "promoted (forced)",
        "replaced": "promoted (the champion could not be evaluated)",
        "kept": "not promoted (champion kept)",
    }[decision.kind]
    champion = "none" if decision.champion_accuracy is None else f"{decision.champion_accuracy:.2%}"
    return "\n".join(
        [
            "## Champion / challenger",
            f"**Decision: {verdict}.** {decision.reason}",
            "",
            "| | run | test accuracy |",
            "|---|---|---|",
            f"| challenger (this run) | | {decision.challenger_accuracy:.2%} |",
            f"| champion before this run | {decision.champion_run_id or '-'} | {champion} |",
            "",
            f"Margin: {100 * decision.margin:.2f} points. Champion pointer: `champion-{dataset}.json` in the output"
            " root; every run is listed in `registry.csv` there.",
            "",
        ]
    )
