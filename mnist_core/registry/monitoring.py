"""What the drift monitor reads and keeps in the registry's database: the latest window of the prediction log for a
model (registry/feedback.py's `predictions` table), and the history of its checks (`drift_checks`, one row per
check), from which the `mnist-monitor` artifact draws each statistic over time. The history is kept here rather than
read back from earlier Prefect artifacts: it survives a Prefect server that is reset or started per run (`mnist
monitor` without a stack), and it sits beside the predictions it describes (SQLite or PostgreSQL alike).

`drift_checks` is added like the feedback tables (SQLAlchemy `create_all` of what is missing, under the registry's
write lock), not as a schema version: code that predates it ignores it.
"""

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Column, Float, Integer, MetaData, String, Table, Text, insert, select

from mnist_core.config import DatasetName
from mnist_core.errors import DataError
from mnist_core.evaluation.monitoring import TESTS, MonitorSettings, Window, drift_tests, summary
from mnist_core.records import MonitoringReference, Record, read_card
from mnist_core.registry.artifacts import recorded_run_folder
from mnist_core.registry.feedback import FeedbackStore, predictions
from mnist_core.registry.store import read_champion
from mnist_core.stamps import utc_iso


class MonitorParams(BaseModel):
    """Which champion `mnist-monitor` watches (its window and thresholds: MonitorSettings, MNIST_MONITOR_*)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: DatasetName = Field("mnist", description="Whose champion to watch.")
    output_dir: Path = Field(Path("runs"), description="The training output root: the registry and its prediction log.")


metadata = MetaData()
drift_checks = Table(
    "drift_checks",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", String(32), nullable=False, index=True),
    Column("dataset", Text, nullable=False),
    Column("run_id", Text, nullable=False),  # the champion whose predictions were checked
    Column("predictions", Integer, nullable=False),  # in the window
    Column("first_at", String(32)),  # the window's oldest and newest prediction
    Column("last_at", String(32)),
    *[Column(f"{test}_{part}", Float) for test in TESTS for part in ("statistic", "p")],
    Column("drifted", Text, nullable=False),  # the tests over their threshold, comma-separated ("" when none)
)

_ready: set[tuple[str, int]] = set()


class MonitorStore(FeedbackStore):
    """The prediction log read by model, and the drift checks' history. StorageError (one line) when the database
    cannot be used."""

    def _ensure(self) -> None:
        super()._ensure()  # the registry and the log's tables
        key = (self.registry.url_text, os.getpid())
        if key in _ready:
            return
        with self.registry.errors(), self.registry._writing() as connection:
            metadata.create_all(connection)
        _ready.add(key)

    def window(self, dataset: str, run_id: str, size: int) -> list[dict[str, Any]]:
        """The latest `size` predictions `run_id` made for `dataset`, oldest first: id, at, class, confidence,
        not_a_digit_score (no images: the monitor compares the model's answers)."""
        columns = [predictions.c[name] for name in ("id", "at", "class", "confidence", "not_a_digit_score")]
        statement = (
            select(*columns)
            .where((predictions.c.dataset == dataset) & (predictions.c.run_id == run_id))
            .order_by(predictions.c.at.desc(), predictions.c.id.desc())
            .limit(size)
        )
        with self._connection() as connection:
            rows = [dict(row) for row in connection.execute(statement).mappings()]
        return rows[::-1]

    def record_check(self, row: dict[str, Any]) -> int:
        """Add one check (the `drift_checks` columns but `id`); its id."""
        with self._connection(write=True) as connection:
            return int(connection.execute(insert(drift_checks).values(**row)).inserted_primary_key[0])

    def checks(self, dataset: str, limit: int) -> list[dict[str, Any]]:
        """The latest `limit` checks of `dataset`, oldest first."""
        statement = (
            select(drift_checks)
            .where(drift_checks.c.dataset == dataset)
            .order_by(drift_checks.c.id.desc())
            .limit(limit)
        )
        with self._connection() as connection:
            return [dict(row) for row in connection.execute(statement).mappings()][::-1]


class Observed(Record):
    """A champion, its reference, and the latest window of what it answered (the prediction log's figures)."""

    dataset: str
    run_id: str | None  # None: no champion yet
    reference: MonitoringReference | None  # None: a card written before references existed
    classes: list[int] = []
    confidences: list[float] = []
    scores: list[float] = []
    first_at: str | None = None
    last_at: str | None = None

    @property
    def window(self) -> Window:
        return Window.from_rows(
            [{"class": c, "confidence": p, "not_a_digit_score": s}
             for c, p, s in zip(self.classes, self.confidences, self.scores, strict=True)]
        )  # fmt: skip


class DriftFigures(Record):
    name: str
    method: str
    statistic: float
    p_value: float
    threshold: float
    drifted: bool


class DriftCheck(Record):
    """One check: `checked` (the tests ran), or why not (`no_champion`, `no_reference`, `too_few` predictions)."""

    at: str
    dataset: str
    run_id: str | None
    status: Literal["checked", "no_champion", "no_reference", "too_few"]
    message: str
    predictions: int = 0
    first_at: str | None = None
    last_at: str | None = None
    tests: list[DriftFigures] = []
    figures: dict[str, float] = {}  # the window's plain figures beside the reference's (monitoring.summary)

    @property
    def drifted(self) -> list[str]:
        return [test.name for test in self.tests if test.drifted]

    def row(self) -> dict[str, Any]:
        """Its `drift_checks` row."""
        by_name = {test.name: test for test in self.tests}
        values = {f"{name}_{part}": getattr(by_name[name], attr) if name in by_name else None
                  for name in TESTS for part, attr in (("statistic", "statistic"), ("p", "p_value"))}  # fmt: skip
        facts = {"at": self.at, "dataset": self.dataset, "run_id": self.run_id or "", "predictions": self.predictions}
        return {
            **facts,
            "first_at": self.first_at,
            "last_at": self.last_at,
            **values,
            "drifted": ",".join(self.drifted),
        }


def observe(output_dir: Path, dataset: str, settings: MonitorSettings) -> Observed:
    """The champion of `dataset` in `output_dir`'s registry, its card's reference, and its latest window."""
    champion = read_champion(Path(output_dir), dataset)
    if champion is None:
        return Observed(dataset=dataset, run_id=None, reference=None)
    try:
        card = read_card(recorded_run_folder(champion, Path(output_dir)))
    except (OSError, ValueError) as error:
        raise DataError(f"champion {champion.run_id}: its model card cannot be read ({error})") from error
    rows = MonitorStore(Path(output_dir)).window(dataset, champion.run_id, settings.window)
    try:
        classes = [int(row["class"]) for row in rows]
        confidences = [float(row["confidence"]) for row in rows]
        scores = [float(row["not_a_digit_score"]) for row in rows]
    except (TypeError, ValueError) as error:  # found by a fault battery: a traceback, after two retries
        raise DataError(f"the prediction log of champion {champion.run_id} holds a value that is not a number "
                        f"({error}): the log is damaged") from error  # fmt: skip
    return Observed(
        dataset=dataset,
        run_id=champion.run_id,
        reference=card.monitoring,
        classes=classes,
        confidences=confidences,
        scores=scores,
        first_at=rows[0]["at"] if rows else None,
        last_at=rows[-1]["at"] if rows else None,
    )


def check(observed: Observed, settings: MonitorSettings) -> DriftCheck:
    """The tests of `observed`'s window against its reference (pure: no I/O)."""
    n = len(observed.classes)
    base = {"at": utc_iso(), "dataset": observed.dataset, "run_id": observed.run_id, "predictions": n,
            "first_at": observed.first_at, "last_at": observed.last_at}  # fmt: skip
    if observed.run_id is None:
        return DriftCheck(**base, status="no_champion", message=f"no {observed.dataset} champion yet: nothing to watch")
    if observed.reference is None:
        message = (f"champion {observed.run_id} has no reference in its model card (trained before the monitor "
                   "existed): retrain or promote a newer run to watch it")  # fmt: skip
        return DriftCheck(**base, status="no_reference", message=message)
    if n < settings.min_predictions:
        message = f"{n} predictions by champion {observed.run_id} so far; the tests need {settings.min_predictions}"
        return DriftCheck(**base, status="too_few", message=message)
    window = observed.window
    tests = [
        DriftFigures(
            name=t.name,
            method=t.method,
            statistic=t.statistic,
            p_value=t.p_value,
            threshold=t.threshold,
            drifted=t.drifted,
        )  # fmt: skip
        for t in drift_tests(observed.reference, window, settings)
    ]
    drifted = [test.name for test in tests if test.drifted]
    message = (f"drift in {', '.join(drifted)} over the latest {n} predictions of {observed.run_id}" if drifted
               else f"no drift over the latest {n} predictions of {observed.run_id}")  # fmt: skip
    return DriftCheck(**base, status="checked", message=message, tests=tests,
                      figures=summary(window, observed.reference))  # fmt: skip
