"""Run registry and champion/challenger promotion for an output root: bookkeeping only (the champion's model is
re-scored by the caller's scorer, from evaluate.py).

Layout under the output root:
- `registry.csv`: one row per recorded run (read it with `read_registry` or `pandas.read_csv`).
- `champion-<dataset>.json`: the current champion of each dataset, replaced atomically with `os.replace`.
- `.registry.lock`: held with `fcntl.flock` while a run compares itself with the champion and records itself, so
  concurrent runs serialize: they cannot both win, and neither can lose the other's registry row.

The registry row and the champion pointer are both derived from the run's model card (`Exported.card`).

flock works across processes on one machine (and on local disks); an output root shared between machines needs a
filesystem whose locks span machines.
"""

import csv
import io
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import ValidationError

from mnist_core.data.download import ROLES as DATA_ROLES
from mnist_core.errors import DataError, PipelineError, StorageError
from mnist_core.files import atomic_write_text, exclusive_lock, temp_files_glob
from mnist_core.layout import REGISTRY_FILE, REGISTRY_LOCK_FILE, champion_file
from mnist_core.records import Exported, Promotion, PromotionKind, Record
from mnist_core.stamps import utc_iso

LOCK_FILE = REGISTRY_LOCK_FILE
# Accuracies are counts over the test-set size; this only absorbs float rounding in `challenger - champion`.
TOLERANCE = 1e-9
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
# Added at the end, so a registry written before them is read as it is and upgraded on its next write.
COLUMNS = [*COLUMNS_BEFORE_FINGERPRINTS, "fingerprint", "extra_data_sha256", "extra_test_accuracy"]


class ChampionPointer(Record):
    """`champion-<dataset>.json`: which run's model is the champion, and how it got there."""

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


def decide(
    challenger_accuracy: float,
    champion_accuracy: float | None,
    margin: float,
    force: bool = False,
    champion_run_id: str | None = None,
    measure: str = "test accuracy",
) -> Promotion:
    """The promotion rule: promote if forced, if there is no champion, or if the challenger's test accuracy is
    strictly higher than the champion's and higher by at least `margin` (a fraction: 0.001 = 0.1 points).
    A tie keeps the champion, so retraining with the same result does not churn the pointer."""
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    challenger = f"{challenger_accuracy:.2%}"

    def make(promoted: bool, kind: PromotionKind, reason: str) -> Promotion:
        return Promotion(
            promoted=promoted,
            kind=kind,
            reason=reason,
            challenger_accuracy=challenger_accuracy,
            champion_accuracy=champion_accuracy,
            champion_run_id=champion_run_id,
            margin=margin,
        )

    if champion_accuracy is None:
        forced = " (promotion was also forced)" if force else ""
        return make(True, "first", f"no champion yet: this run becomes champion with {measure} {challenger}{forced}.")
    champion = f"{champion_accuracy:.2%}"
    difference = challenger_accuracy - champion_accuracy
    figures = (
        f"{measure} {challenger} vs champion {champion_run_id}'s {champion} on the same test images "
        f"(difference {100 * difference:+.2f} points, margin {100 * margin:.2f} points)"
    )
    if force:
        return make(True, "forced", f"promotion forced (force_promote): {figures}.")
    if difference > 0 and difference + TOLERANCE >= margin:
        return make(True, "better", f"promoted: {figures}.")
    return make(False, "kept", f"champion {champion_run_id} stays: {figures}; the run is not better by the margin.")


def champion_path(output_root: Path, dataset: str) -> Path:
    return Path(output_root) / champion_file(dataset)


def read_champion(output_root: Path, dataset: str) -> ChampionPointer | None:
    """The champion pointer of `dataset`, or None when there is none yet; DataError if it is damaged."""
    path = champion_path(output_root, dataset)
    try:
        return ChampionPointer.model_validate_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (ValidationError, UnicodeDecodeError) as error:
        problem = error.errors()[0] if isinstance(error, ValidationError) else {"loc": (), "msg": str(error)}
        where = ".".join(str(part) for part in problem["loc"]) or "the file"
        raise DataError(
            f"{path}: damaged champion pointer ({where}: {problem['msg']}); restore it from a backup, or delete it "
            f"so that the next run becomes {dataset}'s champion (registry.csv lists every run)"
        ) from error


def _registry_text(output_root: Path) -> str | None:
    """The registry's text, None when there is none yet."""
    path = Path(output_root) / REGISTRY_FILE
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError as error:  # e.g. cut inside a multi-byte character of a path
        raise _damaged(path, f"not UTF-8 text at byte {error.start}") from error


def _damaged(path: Path, problem: str) -> DataError:
    return DataError(
        f"{path}: damaged registry: {problem}. This project writes it whole or not at all, so it was cut short or "
        "edited by hand: restore it from a backup, or fix or delete the line named (the decision of that run is "
        "then no longer recorded; the champion pointer beside it still names the champion). Nothing was changed."
    )


def _parse_registry(path: Path, text: str | None) -> pd.DataFrame:
    """The registry's rows, checked line by line: a damaged file is an error, never rows merged or dropped."""
    if text is None:
        return pd.DataFrame(columns=COLUMNS)
    if not text.endswith("\n"):
        line = text.count("\n") + 1
        problem = "the file is empty" if not text else f"line {line}, its last, ends without a line break"
        raise _damaged(path, problem)
    reader = csv.reader(io.StringIO(text), strict=True)
    rows: list[list[str]] = []
    while True:
        # The row's first line, noted before reading it: an unterminated quote makes the reader consume every line
        # to the end, and the message must name where the bad row starts, not the (valid) last line.
        start = reader.line_num + 1
        try:
            rows.append(next(reader))
        except StopIteration:
            break
        except csv.Error as error:
            raise _damaged(path, f"line {start} is not valid CSV ({error})") from error
    if rows[0] not in (COLUMNS, COLUMNS_BEFORE_FINGERPRINTS):
        raise _damaged(path, f"line 1 is not the header {','.join(COLUMNS)}")
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != len(rows[0]):
            raise _damaged(path, f"line {number} has {len(row)} fields instead of {len(rows[0])}")
    frame = pd.read_csv(
        io.StringIO(_upgraded(text)),
        dtype={"run_id": str, "champion_run_id": str, "fingerprint": str, "extra_data_sha256": str},
    )
    return frame


def read_registry(output_root: Path) -> pd.DataFrame:
    """Every recorded run, oldest first (an empty frame with the registry's columns if none yet); DataError, naming
    the file, the line and how to repair it, if the file is damaged."""
    root = Path(output_root)
    return _parse_registry(root / REGISTRY_FILE, _registry_text(root))


def unchanged_since(output_root: Path, dataset: str, fingerprint: str) -> str | None:
    """The run that was already trained from exactly this fingerprint and judged: the champion, or the latest
    recorded run of the dataset with it (a retrain that was not promoted need not be repeated either); None when
    something changed since."""
    champion = read_champion(output_root, dataset)
    if champion is not None and champion.fingerprint == fingerprint:
        return champion.run_id
    registry = read_registry(output_root)
    same = registry.loc[(registry["dataset"] == dataset) & (registry["fingerprint"] == fingerprint), "run_id"]
    return str(same.iloc[-1]) if len(same) else None


def check_registry(output_root: Path, dataset: str) -> None:
    """Read the registry and the dataset's champion pointer, so that a damaged one fails a run before it trains."""
    read_registry(output_root)
    read_champion(output_root, dataset)


def registry_lock(output_root: Path) -> AbstractContextManager[None]:
    """Exclusive lock over the registry and champion pointers of `output_root` (released if the process dies)."""
    return exclusive_lock(Path(output_root) / LOCK_FILE)


def _remove_stale_temp_files(root: Path) -> None:
    # Only called under the lock, so any temp file left here belongs to a writer that crashed.
    for stale in [*root.glob(temp_files_glob(REGISTRY_FILE)), *root.glob(temp_files_glob("champion-*.json"))]:
        stale.unlink(missing_ok=True)


def _write(path: Path, text: str) -> None:
    try:
        atomic_write_text(path, text)
    except OSError as error:
        raise StorageError(f"{path}: could not write it ({error}); the previous file is intact") from error


def _upgraded(text: str) -> str:
    """The registry's text with today's columns: a registry from before the fingerprint columns gets them, empty."""
    rows = list(csv.reader(io.StringIO(text), strict=True))
    if rows[0] == COLUMNS:
        return text
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(row + [""] * (len(COLUMNS) - len(row)) for row in rows[1:])
    return buffer.getvalue()


def _append_row(root: Path, existing: str | None, row: dict[str, Any]) -> None:
    """Write the registry as `existing` (its current text, read and checked under the lock) plus `row`."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    if existing is None:
        writer.writeheader()
    else:
        existing = _upgraded(existing)
    # The csv writer quotes a field with "\n" but not a lone "\r", which its reader then refuses.
    writer.writerow({key: value.replace("\r", " ") if isinstance(value, str) else value for key, value in row.items()})
    _write(root / REGISTRY_FILE, (existing or "") + buffer.getvalue())


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
        fingerprint=card.fingerprint or None,
    )


def record_run(
    output_root: Path,
    run: Exported,
    margin: float,
    force: bool,
    champion_accuracy: Callable[[ChampionPointer], float],
    challenger_accuracy: float | None = None,
    measure: str = "test accuracy",
) -> Promotion:
    """Compare `run` with its dataset's champion, promote it if the rule says so, and append it to the registry.

    `challenger_accuracy` is the run's figure the rule compares (default: its card's test accuracy), named
    `measure` in the decision; `champion_accuracy(pointer)` gives the champion's on the same images.

    `champion_accuracy(pointer)` scores the champion's model on the run's own test set, under the registry lock so
    the champion cannot change meanwhile; if it raises a PipelineError, the champion is unusable (e.g. its folder
    was deleted) and the run replaces it.

    The pointer is replaced before the registry row is written: a crash before the replace leaves the old
    champion and registry untouched; a crash between the two leaves a valid champion whose row is missing, which
    the run's retry (or rerun) writes from the decision the pointer holds. (If another run is promoted over it
    before that retry, the pointer no longer holds that decision: the retry then compares the run afresh.)
    """
    root = Path(output_root).expanduser().resolve()
    with registry_lock(root):
        _remove_stale_temp_files(root)
        existing = _registry_text(root)
        recorded = _parse_registry(root / REGISTRY_FILE, existing)
        earlier = recorded.loc[recorded["run_id"] == run.run_id]
        if len(earlier):  # a retried promotion: the first attempt's decision stands, recorded once
            return _promotion_from_row(earlier.iloc[-1])
        champion = read_champion(root, run.card.dataset.name)
        if champion is not None and champion.run_id == run.run_id:
            # An earlier attempt made this run champion, then failed before writing its row (a crash, a full disk
            # between the two writes): that decision stands, and its row is written now.
            promotion = champion.promotion or _promotion_from_pointer(champion, margin)
            _append_row(root, existing, registry_row(run, promotion, champion.promoted_at))
            return promotion
        challenger = run.card.metrics.test_accuracy if challenger_accuracy is None else challenger_accuracy
        promotion = _compare(challenger, champion, margin, force, champion_accuracy, measure)
        now = utc_iso()
        if promotion.promoted:
            pointer = champion_pointer(run, promotion, now, champion)
            _write(champion_path(root, pointer.dataset), pointer.model_dump_json(indent=2) + "\n")
        _append_row(root, existing, registry_row(run, promotion, now))
    return promotion


def _compare(
    challenger: float,
    champion: ChampionPointer | None,
    margin: float,
    force: bool,
    champion_accuracy: Callable[[ChampionPointer], float],
    measure: str,
) -> Promotion:
    if champion is None:
        return decide(challenger, None, margin, force, measure=measure)
    try:
        score = float(champion_accuracy(champion))
    except PipelineError as error:  # missing or corrupt; other OSErrors (permissions) fail the run
        promotion = decide(challenger, None, margin, force, measure=measure)
        reason = (
            f"the run replaces an unusable champion ({champion.run_id} could not be evaluated: {error}): "
            f"{measure} {challenger:.2%}."
        )
        return promotion.model_copy(update={"kind": "replaced", "reason": reason})
    return decide(challenger, score, margin, force, champion_run_id=champion.run_id, measure=measure)


def _promotion_from_row(row: pd.Series) -> Promotion:
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


def _promotion_from_pointer(champion: ChampionPointer, margin: float) -> Promotion:
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


def promotion_markdown(
    promotion: Promotion, dataset: str, scores: dict[str, tuple[float | None, float | None]] | None = None
) -> str:
    """The report section (and artifact) that says what happened to the champion and why. `scores`: with extra
    images, each set of test images -> (this run's accuracy, the champion's), so both figures are shown."""
    verdict = {
        "first": "promoted (first champion)",
        "better": "promoted (better than the champion)",
        "forced": "promoted (forced)",
        "replaced": "promoted (the champion could not be evaluated)",
        "kept": "not promoted (champion kept)",
    }[promotion.kind]
    champion = "none" if promotion.champion_accuracy is None else f"{promotion.champion_accuracy:.2%}"
    return "\n".join(
        [
            "## Champion / challenger",
            f"**Decision: {verdict}.** {promotion.reason}",
            "",
            "| | run | test accuracy |",
            "|---|---|---|",
            f"| challenger (this run) | | {promotion.challenger_accuracy:.2%} |",
            f"| champion before this run | {promotion.champion_run_id or '-'} | {champion} |",
            "",
            *_scores_table(scores),
            f"Margin: {100 * promotion.margin:.2f} points. Champion pointer: `champion-{dataset}.json` in the output"
            " root; every run is listed in `registry.csv` there.",
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
