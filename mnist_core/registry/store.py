"""The run registry of an output root: the store that records every run and each dataset's champion (the rule
that decides is `rule.py`; the champion's model is re-scored by the caller, from evaluate.py).

Layout under the output root:
- `registry.csv`: one row per recorded run (read it with `read_registry` or `pandas.read_csv`).
- `champion-<dataset>.json`: the current champion of each dataset, replaced atomically with `os.replace`.
- `.registry.lock`: held with `fcntl.flock` while a run compares itself with the champion and records itself, so
  concurrent runs serialize: they cannot both win, and neither can lose the other's registry row.

The shape of a promotion (tasks/promote.py):

    store = RegistryStore(output_root)
    with store.locked() as registry:                  # the registry as it is now, parsed once
        promotion = store.recover(run, margin)        # a retry: the decision already made for this run
        if promotion is None:
            champion = registry.champion(dataset)     # the caller re-scores its model ...
            promotion = judge(...)                    # ... and the pure rule decides
            store.commit(*entries(run, promotion, champion))

The registry row and the champion pointer are both derived from the run's model card (`Exported.card`).

flock works across processes on one machine (and on local disks); an output root shared between machines needs a
filesystem whose locks span machines.
"""

import csv
import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import ValidationError

from mnist_core.data.download import ROLES as DATA_ROLES
from mnist_core.errors import DataError, StorageError
from mnist_core.files import atomic_write_text, exclusive_lock, temp_files_glob
from mnist_core.layout import REGISTRY_FILE, REGISTRY_LOCK_FILE, champion_file
from mnist_core.records import Exported, Promotion, PromotionKind, Record
from mnist_core.stamps import utc_iso

LOCK_FILE = REGISTRY_LOCK_FILE
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
# How the columns read back (what pandas.read_csv used to infer): the rest are text, empty = missing.
FLOAT_COLUMNS = ["best_val_accuracy", "best_val_loss", "test_accuracy", "test_loss", "margin",
                 "champion_test_accuracy", "extra_test_accuracy"]  # fmt: skip
BOOL_COLUMNS = ["promoted"]


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


@dataclass
class Registry:
    """The registry as read once: its text (None: no file yet), its rows as parsed from that text (padded to
    today's columns), and the frame built from those rows. Appending writes the text plus one line, so an
    unchanged file is never re-parsed or re-serialized."""

    root: Path
    text: str | None
    rows: list[list[str]] = field(default_factory=list)
    header: list[str] = field(default_factory=lambda: list(COLUMNS))
    _frame: pd.DataFrame | None = None

    @property
    def frame(self) -> pd.DataFrame:
        """Every recorded run, oldest first, typed as pandas.read_csv reads the file."""
        if self._frame is None:
            self._frame = _frame_of(self.rows)
        return self._frame

    def champion(self, dataset: str) -> "ChampionPointer | None":
        return read_champion(self.root, dataset)

    def row_of(self, run_id: str) -> pd.Series | None:
        """The last row recorded for `run_id`, or None."""
        earlier = self.frame.loc[self.frame["run_id"] == run_id]
        return earlier.iloc[-1] if len(earlier) else None

    def appended(self, row: dict[str, Any]) -> str:
        """The registry's text with `row` appended (and the header upgraded to today's columns if it was older)."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        if self.text is None or self.header != COLUMNS:
            writer.writerow(COLUMNS)
            writer.writerows(self.rows)  # already padded: an older registry is upgraded on its first write
            prefix = ""
        else:
            prefix = self.text
        # The csv writer quotes a field with "\n" but not a lone "\r", which its reader then refuses.
        values = [row.get(column, "") for column in COLUMNS]
        writer.writerow([value.replace("\r", " ") if isinstance(value, str) else value for value in values])
        return prefix + buffer.getvalue()


def _parse_registry(path: Path, text: str | None) -> Registry:
    """The registry's rows, checked line by line: a damaged file is an error, never rows merged or dropped."""
    root = path.parent
    if text is None:
        return Registry(root, None)
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
    header = rows[0]
    if header not in (COLUMNS, COLUMNS_BEFORE_FINGERPRINTS):
        raise _damaged(path, f"line 1 is not the header {','.join(COLUMNS)}")
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise _damaged(path, f"line {number} has {len(row)} fields instead of {len(header)}")
    padded = [row + [""] * (len(COLUMNS) - len(row)) for row in rows[1:]]
    return Registry(root, text, padded, header)


def _frame_of(rows: list[list[str]]) -> pd.DataFrame:
    """The frame of parsed rows, typed as pandas.read_csv typed the file: numbers as floats, `promoted` as bool,
    empty text as missing."""
    frame = pd.DataFrame(rows, columns=COLUMNS, dtype=object)
    for column in COLUMNS:
        values = frame[column].replace("", None)
        if column in FLOAT_COLUMNS:
            frame[column] = pd.to_numeric(values, errors="coerce").astype(float)
        elif column in BOOL_COLUMNS:
            frame[column] = values.map(lambda value: None if value is None else str(value).lower() == "true")
            if frame[column].notna().all():
                frame[column] = frame[column].astype(bool)
        else:
            frame[column] = values.where(values.notna(), float("nan"))
    return frame


def read_registry(output_root: Path) -> pd.DataFrame:
    """Every recorded run, oldest first (an empty frame with the registry's columns if none yet); DataError, naming
    the file, the line and how to repair it, if the file is damaged."""
    return RegistryStore(output_root).read().frame


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


class RegistryStore:
    """The registry files of one output root. Writes happen only inside `locked()`, which reads and checks the
    registry once (a damaged file fails there, before anything is written) and hands it to the caller."""

    def __init__(self, output_root: Path) -> None:
        self.root = Path(output_root).expanduser().resolve()
        self._held: Registry | None = None

    def read(self) -> Registry:
        """The registry as it is now, without the lock (a reader sees whole files: they are replaced atomically)."""
        return _parse_registry(self.root / REGISTRY_FILE, _registry_text(self.root))

    @contextmanager
    def locked(self) -> Iterator[Registry]:
        """Hold the registry's lock (released if the process dies) and yield the registry read under it."""
        with exclusive_lock(self.root / LOCK_FILE):
            self._remove_stale_temp_files()
            self._held = self.read()
            try:
                yield self._held
            finally:
                self._held = None

    def _registry(self) -> Registry:
        if self._held is None:
            raise RuntimeError("RegistryStore.commit and .recover are called inside `with store.locked():`")
        return self._held

    def recover(self, run: Exported, margin: float) -> Promotion | None:
        """The decision already made for `run` by an earlier attempt, or None. A retried promotion finds its row
        (the first decision stands, recorded once) or, if the attempt crashed between its two writes (a crash or
        a full disk after the pointer was replaced), the pointer naming the run: its row is written now."""
        registry = self._registry()
        earlier = registry.row_of(run.run_id)
        if earlier is not None:
            return _promotion_from_row(earlier)
        champion = registry.champion(run.card.dataset.name)
        if champion is not None and champion.run_id == run.run_id:
            promotion = champion.promotion or _promotion_from_pointer(champion, margin)
            self.commit(registry_row(run, promotion, champion.promoted_at), None)
            return promotion
        return None

    def commit(self, row: dict[str, Any], pointer: "ChampionPointer | None") -> None:
        """Record `row` and, for a promotion, make `pointer` its dataset's champion.

        The pointer is replaced before the registry row is written: a crash before the replace leaves the old
        champion and registry untouched; a crash between the two leaves a valid champion whose row is missing,
        which the run's retry (or rerun) writes from the decision the pointer holds (`recover`). (If another run
        is promoted over it before that retry, the pointer no longer holds that decision: the retry then compares
        the run afresh.)"""
        registry = self._registry()
        if pointer is not None:
            _write(champion_path(self.root, pointer.dataset), pointer.model_dump_json(indent=2) + "\n")
        text = registry.appended(row)
        _write(self.root / REGISTRY_FILE, text)
        # Later reads under the same lock see the row just written.
        self._held = _parse_registry(self.root / REGISTRY_FILE, text)

    def _remove_stale_temp_files(self) -> None:
        # Only called under the lock, so any temp file left here belongs to a writer that crashed.
        for pattern in (temp_files_glob(REGISTRY_FILE), temp_files_glob("champion-*.json")):
            for stale in self.root.glob(pattern):
                stale.unlink(missing_ok=True)


def _write(path: Path, text: str) -> None:
    try:
        atomic_write_text(path, text)
    except OSError as error:
        raise StorageError(f"{path}: could not write it ({error}); the previous file is intact") from error


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
    run: Exported, promotion: Promotion, promoted_at: str, previous: "ChampionPointer | None"
) -> "ChampionPointer":
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


def entries(
    run: Exported, promotion: Promotion, previous: "ChampionPointer | None"
) -> tuple[dict[str, Any], "ChampionPointer | None"]:
    """What `commit` records for a decision: the run's row and, if it was promoted, its champion pointer."""
    now = utc_iso()
    pointer = champion_pointer(run, promotion, now, previous) if promotion.promoted else None
    return registry_row(run, promotion, now), pointer


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
