"""The run registry of an output root: the public interface (what the flow, `mnist predict`, the preflight and
servers call). The rule that decides is `rule.py`; the records are in `database.py` (an SQLite file in the output
root, or the database MNIST_REGISTRY_URL names); `legacy.py` reads the files it had before (imported once).

The shape of a promotion (tasks/promote.py):

    store = RegistryStore(output_root)
    with store.locked() as registry:                  # one transaction: other writers wait
        promotion = store.recover(run, margin)        # a retry: the decision already made for this run
        if promotion is None:
            champion = registry.champion(dataset)     # the caller re-scores its model ...
            promotion = judge(...)                    # ... and the pure rule decides
            store.commit(*entries(run, promotion, champion))
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from mnist_core.layout import REGISTRY_FILE
from mnist_core.records import Promotion
from mnist_core.registry.database import RegistryStore
from mnist_core.registry.legacy import champion_path
from mnist_core.registry.rows import (
    COLUMNS,
    COLUMNS_BEFORE_FINGERPRINTS,
    ChampionPointer,
    champion_pointer,
    entries,
    registry_row,
)

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "COLUMNS",
    "COLUMNS_BEFORE_FINGERPRINTS",
    "REGISTRY_FILE",
    "ChampionPointer",
    "RegistryStore",
    "champion_path",
    "champion_pointer",
    "check_registry",
    "entries",
    "promotion_markdown",
    "read_champion",
    "read_registry",
    "registry_row",
    "unchanged_since",
]


def read_champion(output_root: Path, dataset: str) -> ChampionPointer | None:
    """The champion of `dataset`, or None when there is none yet (one short read: cheap enough to poll)."""
    return RegistryStore(output_root).read().champion(dataset)


def read_registry(output_root: Path) -> pd.DataFrame:
    """Every recorded run, oldest first (an empty frame with the registry's columns if none yet)."""
    return RegistryStore(output_root).read().frame


def unchanged_since(output_root: Path, dataset: str, fingerprint: str) -> str | None:
    """The run that was already trained from exactly this fingerprint and judged: the champion, or the latest
    recorded run of the dataset with it (a retrain that was not promoted need not be repeated either); None when
    something changed since."""
    registry = RegistryStore(output_root).read()
    champion = registry.champion(dataset)
    if champion is not None and champion.fingerprint == fingerprint:
        return champion.run_id
    return registry.latest_with_fingerprint(dataset, fingerprint)


def check_registry(output_root: Path, dataset: str) -> None:
    """Open the registry (connect, migrate, import the files it had before) and read the dataset's champion, so that
    an unreachable database, a newer schema or damaged files fail a run before it trains. An output root with no
    registry yet is left as it is (the first promotion creates it)."""
    RegistryStore(output_root).read().champion(dataset)


def promotion_markdown(
    promotion: Promotion,
    dataset: str,
    scores: dict[str, tuple[float | None, float | None]] | None = None,
    run_id: str = "",
) -> str:
    """The report section (and artifact) that says what happened to the champion and why. `scores`: with extra
    images, each set of test images -> (this run's accuracy, the champion's), so both figures are shown."""
    verdict = {
        "first": "promoted (first champion)",
        "better": "promoted (better than the champion)",
        "forced": "promoted (forced)",
        "replaced": "promoted (the champion could not be evaluated)",
        "kept": "not promoted (champion kept)",
        "manual": "promoted by hand",
        "rollback": "restored by a rollback",
    }[promotion.kind]
    champion = "none" if promotion.champion_accuracy is None else f"{promotion.champion_accuracy:.2%}"
    return "\n".join(
        [
            "## Champion / challenger",
            f"**Decision: {verdict}.** {promotion.reason}",
            "",
            "| | run | test accuracy |",
            "|---|---|---|",
            f"| challenger (this run) | {run_id or '-'} | {promotion.challenger_accuracy:.2%} |",
            f"| champion before this run | {promotion.champion_run_id or '-'} | {champion} |",
            "",
            *_scores_table(scores),
            f"Margin: {100 * promotion.margin:.2f} points. `mnist registry champion --dataset {dataset}` shows the"
            " champion; `mnist registry ls` lists every run.",
            "",
        ]
    )


def _scores_table(scores: dict[str, tuple[float | None, float | None]] | None) -> list[str]:
    if not scores:
        return []
    names = {"test": "the dataset's test set", "extra": "the extra images' test part"}

    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.2%}"

    rows = [f"| {names[key]} | {cell(run)} | {cell(champion)} |" for key, (run, champion) in scores.items()]
    return ["| test images | this run | champion (re-scored) |", "|---|---|---|", *rows, ""]
