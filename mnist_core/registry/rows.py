"""What the registry records, whatever holds it: a run's row (its facts from the model card, the decision), the
champion pointer, and the decision read back from either."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from mnist_core.data.download import ROLES as DATA_ROLES
from mnist_core.records import Exported, Promotion, PromotionKind, Record
from mnist_core.stamps import utc_iso

if TYPE_CHECKING:
    import pandas as pd

COLUMNS_BEFORE_FINGERPRINTS = [
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
# Added at the end of registry.csv (its last format), so a registry written before them is read as it is.
CSV_COLUMNS = [*COLUMNS_BEFORE_FINGERPRINTS, "fingerprint", "extra_data_sha256", "extra_test_accuracy"]
# The database's runs table: registry.csv's last columns, then where the model files were uploaded.
COLUMNS = [*CSV_COLUMNS, "artifact_store", "card_sha256"]
# How the columns read back (what pandas.read_csv used to infer): the rest are text, empty = missing.
FLOAT_COLUMNS = ["best_val_accuracy", "best_val_loss", "test_accuracy", "test_loss", "margin",
                 "champion_test_accuracy", "extra_test_accuracy"]  # fmt: skip
BOOL_COLUMNS = ["promoted"]


class ChampionPointer(Record):
    """A dataset's champion alias: which run's model is the champion, and how it got there."""

    dataset: str
    run_id: str
    run_dir: Path
    model: Path
    test_accuracy: float  # as measured when it was promoted; a challenger is compared with a re-score
    sha256: dict[str, str]  # of the data it was trained and tested on
    promoted_at: str
    decision: PromotionKind
    previous_run_id: str | None
    # The decision in full, so a registry row that failed to be written after the pointer can be written later
    # (absent from pointers written before it was kept).
    promotion: Promotion | None = None
    fingerprint: str | None = None  # of the champion's data, parameters and code: a run with the same skips training
    # The store its files were uploaded to and its card's SHA-256 there (registry/artifacts.py): what another
    # machine fetches them by. None: only run_dir holds them.
    artifact_store: str | None = None
    card_sha256: str | None = None


def registry_row(run: Exported, promotion: Promotion, recorded_at: str) -> dict[str, Any]:
    """The run's registry row: its facts from the model card, the decision from `promotion`."""
    card = run.card
    return {
        "run_id": card.run_id,
        "recorded_at": recorded_at,
        "dataset": card.dataset.name,
        "params_digest": card.training_digest,
        **{f"sha256_{role}": card.dataset.sha256.get(role, "") for role in DATA_ROLES},
        "best_val_accuracy": card.metrics.best_val_accuracy,
        "best_val_loss": card.metrics.best_val_loss,
        "test_accuracy": card.metrics.test_accuracy,
        "test_loss": card.metrics.test_loss,
        "margin": promotion.margin,
        "champion_run_id": promotion.champion_run_id or "",
        "champion_test_accuracy": "" if promotion.champion_accuracy is None else promotion.champion_accuracy,
        "decision": promotion.kind,
        "promoted": promotion.promoted,
        "reason": promotion.reason,
        "run_dir": str(run.run_dir),
        "fingerprint": card.fingerprint,
        "extra_data_sha256": card.dataset.extra_sha256 or "",
        "extra_test_accuracy": "" if card.metrics.extra_test_accuracy is None else card.metrics.extra_test_accuracy,
        "artifact_store": run.artifact_store or "",
        "card_sha256": run.card_sha256 or "",
    }


def champion_pointer(
    run: Exported, promotion: Promotion, promoted_at: str, previous: ChampionPointer | None
) -> ChampionPointer:
    """The pointer that makes `run` its dataset's champion: its facts from the model card."""
    card = run.card
    return ChampionPointer(
        dataset=card.dataset.name,
        run_id=card.run_id,
        run_dir=run.run_dir,
        model=run.model,
        test_accuracy=card.metrics.test_accuracy,
        sha256=card.dataset.sha256,
        promoted_at=promoted_at,
        decision=promotion.kind,
        previous_run_id=previous.run_id if previous else None,
        promotion=promotion,
        artifact_store=run.artifact_store,
        card_sha256=run.card_sha256,
        fingerprint=card.fingerprint or None,
    )


def entries(
    run: Exported, promotion: Promotion, previous: ChampionPointer | None
) -> tuple[dict[str, Any], ChampionPointer | None]:
    """What `commit` records for a decision: the run's row and, if it was promoted, its champion pointer."""
    now = utc_iso()
    pointer = champion_pointer(run, promotion, now, previous) if promotion.promoted else None
    return registry_row(run, promotion, now), pointer


def promotion_from_row(row: pd.Series) -> Promotion:
    import pandas as pd

    def optional(value: Any) -> Any:
        return None if pd.isna(value) or value == "" else value

    champion_accuracy = optional(row["champion_test_accuracy"])
    return Promotion(
        promoted=str(row["promoted"]).lower() == "true",
        kind=str(row["decision"]),
        reason=str(row["reason"]),
        challenger_accuracy=float(row["test_accuracy"]),
        champion_accuracy=None if champion_accuracy is None else float(champion_accuracy),
        champion_run_id=optional(row["champion_run_id"]),
        margin=float(row["margin"]),
    )


def promotion_from_pointer(champion: ChampionPointer, margin: float) -> Promotion:
    """The decision recorded by a pointer that does not hold it in full (written before it was kept)."""
    return Promotion(
        promoted=True,
        kind=champion.decision,
        reason=f"promoted ({champion.decision}) at {champion.promoted_at}, as champion-{champion.dataset}.json "
        "records; the figures it was compared with were not kept.",
        challenger_accuracy=champion.test_accuracy,
        champion_accuracy=None,
        champion_run_id=champion.previous_run_id,
        margin=margin,
    )
