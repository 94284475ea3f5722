"""The registry in a SQL database, through SQLAlchemy: an SQLite file in the output root by default
(`<output_dir>/registry.db`), or the database `MNIST_REGISTRY_URL` names (e.g. PostgreSQL,
`postgresql+psycopg://user:password@host/db`).

Tables (see docs/registry.md):
- `runs`: one row per recorded run, the columns `registry.csv` had (`pandas.read_sql("runs", engine)`), plus `seq`.
- `decisions`: every decision about the champion: the rule's for each run, and the ones people make
  (`mnist registry promote` / `rollback`, with who and why).
- `champions`: one row per dataset, the champion alias (its pointer as JSON).
- `registry_schema`: the schema version; `legacy_imports`: the output roots whose `registry.csv` and
  `champion-*.json` were imported (once: the files are left as they were).

A promotion writes the run's row, its decision and the champion alias in one transaction: a crash leaves all or
nothing. Writers serialize: on SQLite with `BEGIN IMMEDIATE` (WAL, so readers never wait; a writer waits up to
BUSY_SECONDS for another), on PostgreSQL with a transaction-scoped advisory lock. The lock is held while the caller
re-scores the champion, so the champion it measured is still the champion when the decision is recorded.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tenacity
from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    delete,
    event,
    func,
    insert,
    inspect,
    select,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, SQLAlchemyError

from mnist_core.data.download import ROLES as DATA_ROLES
from mnist_core.errors import DataError, StorageError
from mnist_core.layout import CARD_FILE, ONNX_FILE, REGISTRY_DB_FILE, REGISTRY_FILE, WEIGHTS_FILE
from mnist_core.records import Exported, Promotion
from mnist_core.registry.legacy import CHAMPION_GLOB, legacy_champions, read_registry_file
from mnist_core.registry.rows import (
    BOOL_COLUMNS,
    COLUMNS,
    FLOAT_COLUMNS,
    ChampionPointer,
    promotion_from_pointer,
    promotion_from_row,
    registry_row,
)
from mnist_core.settings import current as current_settings
from mnist_core.stamps import utc_iso

if TYPE_CHECKING:  # pandas (~0.25 s to import) only where a frame is made: an Unchanged run never needs it
    import pandas as pd

URL_VARIABLE = "MNIST_REGISTRY_URL"
SCHEMA_VERSION = 1
# How long a writer waits for another (which may be re-scoring the champion) before giving up with one line.
BUSY_SECONDS = 600.0
# An unreachable server fails preflight in seconds, not after a TCP timeout of minutes.
CONNECT_SECONDS = 5
# Any fixed number: the key of the PostgreSQL advisory lock that serializes registry writers.
ADVISORY_LOCK_KEY = 2026_0021

log = logging.getLogger(__name__)
metadata = MetaData()

registry_schema = Table(
    "registry_schema",
    metadata,
    Column("version", Integer, nullable=False),
    Column("migrated_at", String(32), nullable=False),
)
legacy_imports = Table(
    "legacy_imports",
    metadata,
    Column("source", Text, primary_key=True),  # the output root whose files were imported
    Column("imported_at", String(32), nullable=False),
    Column("runs", Integer, nullable=False),
    Column("champions", Integer, nullable=False),
)
NULLABLE = {"champion_run_id", "champion_test_accuracy", "fingerprint", "extra_data_sha256", "extra_test_accuracy",
            "artifact_store", "card_sha256"}  # fmt: skip


def _run_column(name: str) -> Column:
    kind = Float if name in FLOAT_COLUMNS else Boolean if name in BOOL_COLUMNS else Text
    return Column(name, kind, nullable=name in NULLABLE, unique=name == "run_id", index=name == "dataset")


runs = Table(
    "runs",
    metadata,
    *[_run_column(name) for name in COLUMNS],
    # Last, so `read_sql("runs")` starts with the columns registry.csv had; orders rows oldest first.
    Column("seq", Integer, primary_key=True, autoincrement=True),
)
decisions = Table(
    "decisions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", String(32), nullable=False),
    Column("dataset", Text, nullable=False, index=True),
    Column("run_id", Text, nullable=False),
    Column("kind", String(16), nullable=False),  # a PromotionKind
    Column("promoted", Boolean, nullable=False),
    Column("previous_run_id", Text),  # the champion before the decision
    Column("reason", Text, nullable=False),
    Column("who", Text, nullable=False),  # "rule" for the rule's decisions, else the user
    Column("pointer", Text),  # the champion pointer it made (JSON), for a promotion: what a rollback restores
)
champions = Table(
    "champions",
    metadata,
    Column("dataset", Text, primary_key=True),
    Column("run_id", Text, nullable=False),
    Column("promoted_at", String(32), nullable=False),
    Column("pointer", Text, nullable=False),  # ChampionPointer as JSON
)
# Each schema version's upgrade from the one before: none yet (version 1 is the first).
MIGRATIONS: dict[int, str] = {}


def registry_url(output_root: Path) -> str:
    """`MNIST_REGISTRY_URL` if set (it names one database for every output root), else `<output_root>/registry.db`."""
    url = (current_settings().secret("registry_url") or "").strip()
    if url:
        return url
    # Rendered by SQLAlchemy, which escapes the path: a folder named with '?' or '%' made the database elsewhere.
    return URL.create(
        "sqlite", database=str(Path(output_root).expanduser().resolve() / REGISTRY_DB_FILE)
    ).render_as_string()


def _shown(url: URL) -> str:
    return url.render_as_string(hide_password=True)


_engines: dict[tuple[str, int], Engine] = {}
_prepared: set[tuple[str, str, int]] = set()
_engines_lock = threading.Lock()


def engine_for(url: str) -> Engine:
    """The engine of `url`, one per process (a forked child makes its own: connections do not survive a fork)."""
    key = (url, os.getpid())
    with _engines_lock:
        if key not in _engines:
            _engines[key] = _create_engine(url)
        return _engines[key]


def _create_engine(url_text: str) -> Engine:
    try:
        url = make_url(url_text)
    except ArgumentError as error:
        raise StorageError(f"registry database URL {url_text!r} is not a database URL ({error})") from error
    try:
        if url.get_backend_name() == "sqlite":
            return _sqlite_engine(url)
        connect_args = {"connect_timeout": CONNECT_SECONDS} if url.get_backend_name() == "postgresql" else {}
        return create_engine(url, pool_pre_ping=True, connect_args=connect_args)
    except (NoSuchModuleError, ImportError) as error:
        raise StorageError(
            f"registry database {_shown(url)}: no driver for it in this Python ({error}); install it, or unset "
            f"{URL_VARIABLE} to use the SQLite file in the output folder"
        ) from error


def _sqlite_engine(url: URL) -> Engine:
    # A pool per process (engine_for): a forked child opens its own connections, never its parent's.
    engine = create_engine(url, connect_args={"timeout": BUSY_SECONDS})

    @event.listens_for(engine, "connect")
    def _connect(connection: Any, _record: Any) -> None:
        # SQLAlchemy emits BEGIN itself (below), not pysqlite, whose implicit transactions cannot be IMMEDIATE.
        connection.isolation_level = None
        cursor = connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(BUSY_SECONDS * 1000)}")
        # WAL: readers (read_champion, every second from a server) never wait for a writer, nor block one.
        if url.query.get("mode") != "ro":
            _enter_wal(cursor)
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        # A writer takes the write lock at BEGIN, waiting its turn (busy_timeout); a deferred transaction that
        # upgrades later fails at once with "database is locked" when another wrote meanwhile.
        immediate = connection.get_execution_options().get("registry_write", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def _enter_wal(cursor: Any) -> None:
    """Switch a new database file to WAL, waiting like any writer would.

    The switch needs the file to itself. While the file is still in rollback mode (the moment it is created) and
    another process holds its write lock, SQLite answers "database is locked" at once instead of calling the busy
    handler (upgrading a read lock there could deadlock), so six runs creating one registry together fail without
    this retry. Once the file is in WAL (it stays so), the statement changes nothing and answers at once."""
    tenacity.Retrying(
        retry=tenacity.retry_if_exception(
            lambda error: isinstance(error, sqlite3.OperationalError) and "locked" in str(error)
        ),
        wait=tenacity.wait_exponential(multiplier=0.005, max=0.2),
        stop=tenacity.stop_after_delay(BUSY_SECONDS),
        reraise=True,
    )(cursor.execute, "PRAGMA journal_mode = WAL")


def _read_only_snapshot(file: Path) -> bool:
    """Whether `file` can only be read as it is: in a folder this process cannot write (a read-only mount, a copy
    on read-only media) with no writer's shared-memory file beside it. SQLite opens a WAL database there only as
    immutable (it cannot create the `-shm` file); with a writer's `-shm` present it reads it as usual. Found by a
    fault battery: `mnist registry ls` and `mnist predict` said "unable to open database file"."""
    return not os.access(file.parent, os.W_OK) and not file.with_name(f"{file.name}-shm").exists()


def _storage_error(url: URL, error: SQLAlchemyError) -> StorageError:
    original = getattr(error, "orig", None) or error
    detail = (str(original).strip().splitlines() or [type(original).__name__])[0]
    if "database is locked" in detail or "database is busy" in detail:
        return StorageError(
            f"registry database {_shown(url)}: busy for over {BUSY_SECONDS:g} s (another run held it); retry, "
            "nothing was recorded"
        )
    return StorageError(f"registry database {_shown(url)}: {detail}")


class RegistryView:
    """The registry as one connection sees it: inside `RegistryStore.locked()`, the writer's transaction; outside it,
    a short read per call."""

    def __init__(self, store: RegistryStore, connection: Connection | None = None) -> None:
        self._store = store
        self._connection = connection

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        if self._connection is not None:
            yield self._connection
            return
        with self._store.errors(), self._store.engine.connect() as connection:
            yield connection

    @property
    def frame(self) -> pd.DataFrame:
        """Every recorded run, oldest first, typed as pandas.read_csv typed registry.csv."""
        import pandas as pd

        with self._reading() as connection:
            frame = pd.read_sql(select(*[runs.c[name] for name in COLUMNS]).order_by(runs.c.seq), connection)
        return _typed(frame)

    def champion(self, dataset: str) -> ChampionPointer | None:
        with self._reading() as connection:
            text = connection.execute(select(champions.c.pointer).where(champions.c.dataset == dataset)).scalar()
        return None if text is None else ChampionPointer.model_validate_json(text)

    def champions(self) -> list[ChampionPointer]:
        with self._reading() as connection:
            texts = connection.execute(select(champions.c.pointer).order_by(champions.c.dataset)).scalars().all()
        return [ChampionPointer.model_validate_json(text) for text in texts]

    def row_of(self, run_id: str) -> pd.Series | None:
        """The run's row, or None (a plain query: every promotion asks, and pandas would cost more than the
        database)."""
        import pandas as pd

        with self._reading() as connection:
            statement = select(*[runs.c[name] for name in COLUMNS]).where(runs.c.run_id == run_id)
            found = connection.execute(statement).mappings().first()
        if found is None:
            return None
        values = {
            name: float("nan") if found[name] is None and name in FLOAT_COLUMNS else found[name] for name in COLUMNS
        }
        return pd.Series(values, dtype=object)

    def latest_with_fingerprint(self, dataset: str, fingerprint: str) -> str | None:
        with self._reading() as connection:
            statement = (
                select(runs.c.run_id)
                .where(runs.c.dataset == dataset, runs.c.fingerprint == fingerprint)
                .order_by(runs.c.seq.desc())
                .limit(1)
            )
            return connection.execute(statement).scalar()

    def decisions(self, dataset: str | None = None, run_id: str | None = None) -> list[dict[str, Any]]:
        """Decisions about champions, oldest first."""
        statement = select(decisions).order_by(decisions.c.id)
        if dataset is not None:
            statement = statement.where(decisions.c.dataset == dataset)
        if run_id is not None:
            statement = statement.where(decisions.c.run_id == run_id)
        with self._reading() as connection:
            return [dict(row._mapping) for row in connection.execute(statement)]


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    import pandas as pd

    for name in FLOAT_COLUMNS:
        frame[name] = pd.to_numeric(frame[name], errors="coerce").astype(float)
    for name in BOOL_COLUMNS:
        frame[name] = frame[name].astype(bool)
    return frame


class EmptyView(RegistryView):
    """An output root with no registry yet (and nothing to import): read without creating the database."""

    def __init__(self) -> None:
        pass

    @property
    def frame(self) -> pd.DataFrame:
        import pandas as pd

        return _typed(pd.DataFrame({name: pd.Series(dtype=object) for name in COLUMNS}))

    def champion(self, dataset: str) -> ChampionPointer | None:
        return None

    def champions(self) -> list[ChampionPointer]:
        return []

    def row_of(self, run_id: str) -> pd.Series | None:
        return None

    def latest_with_fingerprint(self, dataset: str, fingerprint: str) -> str | None:
        return None

    def decisions(self, dataset: str | None = None, run_id: str | None = None) -> list[dict[str, Any]]:
        return []


class RegistryStore:
    """The registry of an output root, in its database. Writes happen inside `locked()`: one transaction, which
    commits when the block ends and rolls back (nothing recorded) if it raises."""

    def __init__(self, output_root: Path, url: str | None = None) -> None:
        self.root = Path(output_root).expanduser().resolve()
        self.url_text = url or registry_url(self.root)
        self.engine = engine_for(self.url_text)
        self.url = self.engine.url
        self.imported: str | None = None  # the one line reporting an import of registry.csv, if this opened it
        self._held: RegistryView | None = None

    @property
    def sqlite_file(self) -> Path | None:
        return Path(self.url.database) if self.url.get_backend_name() == "sqlite" and self.url.database else None

    @contextmanager
    def errors(self) -> Iterator[None]:
        """Database errors as one line naming the database (its password hidden)."""
        try:
            yield
        except DBAPIError as error:
            raise _storage_error(self.url, error) from error
        except SQLAlchemyError as error:
            raise _storage_error(self.url, error) from error

    def missing_folder(self) -> str | None:
        """For a command that only reads: the one-line problem when the SQLite file's folder does not exist (a
        mistyped --output-dir, which a read would otherwise make, database and all, and report as empty; found by
        a fault battery and a docs check), else None."""
        file = self.sqlite_file
        if file is None or file.parent.is_dir():
            return None
        return f"{file.parent}: no such folder (--output-dir names the runs' folder; a sqlite --url, the database's)"

    def _legacy_files(self) -> bool:
        return (self.root / REGISTRY_FILE).is_file() or any(self.root.glob(CHAMPION_GLOB))

    def exists(self) -> bool:
        """Whether there is anything to read: the database (any server URL counts) or files to import. Something
        else where the SQLite file belongs (a folder) is an error, not an empty registry (found by a fault battery:
        the readers said "no runs recorded" where the writers said the database could not be opened)."""
        file = self.sqlite_file
        if file is not None and file.exists() and not file.is_file():
            raise StorageError(f"registry database {file}: there is something that is not a file there")
        return file is None or file.is_file() or self._legacy_files()

    def open(self) -> RegistryStore:
        """Create or migrate the schema and import the output root's files, once per process; refuses a database
        from a newer schema, and damaged files (before anything is created)."""
        key = (self.url_text, str(self.root), os.getpid())
        if key in _prepared:
            return self
        file = self.sqlite_file
        legacy = self._legacy_files()
        # Read (and check) the files first when the database is still to be made: damaged ones are refused with
        # nothing created.
        parsed = _read_legacy(self.root) if legacy and file is not None and not file.is_file() else None
        if file is not None:
            try:
                file.parent.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise StorageError(f"registry database {file}: cannot create its folder ({error})") from error
        with self.errors(), self._writing() as connection:
            self._migrate(connection)
            if legacy and not _imported(connection, self.root):
                self.imported = _import(connection, self.root, parsed or _read_legacy(self.root))
        if self.imported:
            log.warning("%s", self.imported)
        _prepared.add(key)
        return self

    def _migrate(self, connection: Connection) -> None:
        version = _schema_version(connection)
        if version is None:
            metadata.create_all(connection)
            connection.execute(insert(registry_schema).values(version=SCHEMA_VERSION, migrated_at=utc_iso()))
            return
        if version > SCHEMA_VERSION:
            raise StorageError(
                f"registry database {_shown(self.url)} has schema version {version}, newer than this code's "
                f"{SCHEMA_VERSION}: upgrade the project to use it (nothing was changed)"
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            connection.exec_driver_sql(MIGRATIONS[target])
            connection.execute(insert(registry_schema).values(version=target, migrated_at=utc_iso()))

    @contextmanager
    def _writing(self) -> Iterator[Connection]:
        with self.engine.connect() as connection:
            connection.execution_options(registry_write=True)
            with connection.begin():
                if self.url.get_backend_name() == "postgresql":
                    connection.execute(select(func.pg_advisory_xact_lock(ADVISORY_LOCK_KEY)))
                yield connection

    def read(self) -> RegistryView:
        """The registry to read (each call a short transaction); nothing is created for an empty output root."""
        if not self.exists():
            return EmptyView()
        file = self.sqlite_file
        if file is not None and _read_only_snapshot(file):
            database = f"file:{urllib.parse.quote(str(file))}"  # SQLite's URI form: a '?' or '%' in the path escaped
            query = {"mode": "ro", "immutable": "1", "uri": "true"}
            uri = URL.create("sqlite", database=database, query=query).render_as_string()
            return RegistryView(RegistryStore(self.root, uri))
        self.open()
        return RegistryView(self)

    @contextmanager
    def locked(self) -> Iterator[RegistryView]:
        """The registry's write transaction: other writers wait until it ends; committed when the block ends."""
        self.open()
        with self.errors(), self._writing() as connection:
            self._held = RegistryView(self, connection)
            try:
                yield self._held
            finally:
                self._held = None

    def _transaction(self) -> Connection:
        if self._held is None or self._held._connection is None:
            raise RuntimeError("RegistryStore.commit, .recover, .promote, .rollback run inside `with store.locked()`")
        return self._held._connection

    def recover(self, run: Exported, margin: float) -> Promotion | None:
        """The decision already recorded for `run` (a retried promotion: the first decision stands, recorded
        once), or None. A champion imported from files whose row was never written (a crash between the two
        writes of the file registry) gets its row now, from the decision its pointer holds."""
        connection = self._transaction()
        assert self._held is not None
        earlier = self._held.row_of(run.run_id)
        if earlier is not None:
            return promotion_from_row(earlier)
        champion = self._held.champion(run.card.dataset.name)
        if champion is not None and champion.run_id == run.run_id:
            promotion = champion.promotion or promotion_from_pointer(champion, margin)
            connection.execute(insert(runs).values(**_run_values(registry_row(run, promotion, champion.promoted_at))))
            return promotion
        return None

    def commit(self, row: dict[str, Any], pointer: ChampionPointer | None, who: str = "rule") -> None:
        """Record the run's `row` and its decision and, for a promotion, make `pointer` the champion alias: in the
        transaction `locked()` holds, so all of it is recorded or none."""
        connection = self._transaction()
        values = _run_values(row)
        connection.execute(insert(runs).values(**values))
        kind = str(values["decision"])
        self._decide(
            connection,
            values["dataset"],
            values["run_id"],
            kind,
            bool(values["promoted"]),
            values["champion_run_id"],
            str(values["reason"]),
            who,
            pointer,
        )
        if pointer is not None:
            _set_champion(connection, pointer)

    def _decide(
        self,
        connection: Connection,
        dataset: str,
        run_id: str,
        kind: str,
        promoted: bool,
        previous: str | None,
        reason: str,
        who: str,
        pointer: ChampionPointer | None,
    ) -> None:
        connection.execute(
            insert(decisions).values(
                at=utc_iso(),
                dataset=dataset,
                run_id=run_id,
                kind=kind,
                promoted=promoted,
                previous_run_id=previous,
                reason=reason,
                who=who,
                pointer=None if pointer is None else pointer.model_dump_json(),
            )
        )

    def promote(self, run_id: str, reason: str, who: str) -> ChampionPointer:
        """Make a recorded run its dataset's champion by hand (a manual decision, with who and why)."""
        connection = self._transaction()
        assert self._held is not None
        row = self._held.row_of(run_id)
        if row is None:
            raise DataError(f"no run {run_id!r} in the registry {_shown(self.url)}: `mnist registry ls` lists them")
        dataset = str(row["dataset"])
        current = self._held.champion(dataset)
        if current is not None and current.run_id == run_id:
            raise DataError(f"{run_id} is already {dataset}'s champion: nothing changed")
        now = utc_iso()
        text = f"manual promotion by {who}: {reason}"
        promotion = Promotion(
            promoted=True,
            kind="manual",
            reason=text,
            margin=0.0,
            challenger_accuracy=float(row["test_accuracy"]),
            champion_accuracy=None,
            champion_run_id=current.run_id if current else None,
        )
        pointer = _pointer_from_row(row, now, promotion, current)
        _require_model(pointer)
        self._decide(connection, dataset, run_id, "manual", True, promotion.champion_run_id, text, who, pointer)
        _set_champion(connection, pointer)
        return pointer

    def rollback(self, dataset: str, who: str) -> ChampionPointer:
        """Put back the champion the current one replaced (recorded as a rollback, with who)."""
        connection = self._transaction()
        assert self._held is not None
        current = self._held.champion(dataset)
        if current is None:
            raise DataError(f"no {dataset} champion in the registry {_shown(self.url)}: nothing to roll back")
        if current.previous_run_id is None:
            raise DataError(f"{dataset}'s champion {current.run_id} replaced none: nothing to roll back to")
        previous = self._pointer_of(connection, current.previous_run_id)
        now = utc_iso()
        text = f"rollback by {who}: {current.run_id} -> {previous.run_id}"
        promotion = Promotion(
            promoted=True,
            kind="rollback",
            reason=text,
            challenger_accuracy=previous.test_accuracy,
            champion_accuracy=current.test_accuracy,
            champion_run_id=current.run_id,
            margin=0.0,
        )
        # The restored champion's own predecessor: a second rollback goes one further back.
        pointer = previous.model_copy(update={"promoted_at": now, "decision": "rollback", "promotion": promotion})
        _require_model(pointer)
        self._decide(connection, dataset, previous.run_id, "rollback", True, current.run_id, text, who, pointer)
        _set_champion(connection, pointer)
        return pointer

    def _pointer_of(self, connection: Connection, run_id: str) -> ChampionPointer:
        """The pointer `run_id` had when it was last made champion (else one built from its row)."""
        statement = (
            select(decisions.c.pointer)
            .where(decisions.c.run_id == run_id, decisions.c.pointer.is_not(None))
            .order_by(decisions.c.id.desc())
            .limit(1)
        )
        text = connection.execute(statement).scalar()
        if text is not None:
            return ChampionPointer.model_validate_json(text)
        assert self._held is not None
        row = self._held.row_of(run_id)
        if row is None:
            raise DataError(f"the previous champion {run_id} is not in the registry: nothing to roll back to")
        promotion = promotion_from_row(row)
        return _pointer_from_row(row, str(row["recorded_at"]), promotion, None)


def _require_model(pointer: ChampionPointer) -> None:
    """Refuse a champion by hand that no machine could load: its files only in a run folder that is gone. Found by a
    new user's try: `promote` of a run whose folder was deleted made it champion, and every server then answered
    503. A run uploaded to an artifact store is fetched from there (its SHA-256s checked when it is)."""
    if pointer.artifact_store and pointer.card_sha256:
        return
    missing = [name for name in (CARD_FILE, ONNX_FILE) if not (Path(pointer.run_dir) / name).is_file()]
    if missing:
        raise DataError(
            f"{pointer.run_id}: its run folder {pointer.run_dir} has no {' or '.join(missing)} (deleted, moved, or on "
            "another machine) and no artifact store holds its files: no server could load it; nothing changed"
        )


def _run_values(row: dict[str, Any]) -> dict[str, Any]:
    """A registry row as column values: empty fields are NULL, numbers floats, `promoted` a bool."""
    values: dict[str, Any] = {}
    for name in COLUMNS:
        value = row.get(name, "")
        if value == "" or value is None or (isinstance(value, float) and value != value):
            values[name] = None if name in NULLABLE or name in FLOAT_COLUMNS else ""
        elif name in FLOAT_COLUMNS:
            values[name] = float(value)
        elif name in BOOL_COLUMNS:
            values[name] = value if isinstance(value, bool) else str(value).lower() == "true"
        else:
            values[name] = str(value)
    return values


def _set_champion(connection: Connection, pointer: ChampionPointer) -> None:
    # Delete and insert in the writer's transaction (it holds the lock): portable, unlike each dialect's upsert.
    connection.execute(delete(champions).where(champions.c.dataset == pointer.dataset))
    connection.execute(
        insert(champions).values(
            dataset=pointer.dataset,
            run_id=pointer.run_id,
            promoted_at=pointer.promoted_at,
            pointer=pointer.model_dump_json(),
        )
    )


def _pointer_from_row(
    row: pd.Series, promoted_at: str, promotion: Promotion, previous: ChampionPointer | None
) -> ChampionPointer:
    import pandas as pd

    def text(name: str) -> str | None:
        value = row[name]
        return None if value is None or pd.isna(value) or value == "" else str(value)

    run_dir = Path(str(row["run_dir"]))
    return ChampionPointer(
        dataset=str(row["dataset"]),
        run_id=str(row["run_id"]),
        run_dir=run_dir,
        model=run_dir / WEIGHTS_FILE,
        test_accuracy=float(row["test_accuracy"]),
        sha256={role: value for role in DATA_ROLES if (value := text(f"sha256_{role}"))},
        promoted_at=promoted_at,
        decision=promotion.kind,
        previous_run_id=previous.run_id if previous else None,
        promotion=promotion,
        fingerprint=text("fingerprint"),
        artifact_store=text("artifact_store"),
        card_sha256=text("card_sha256"),
    )


def _schema_version(connection: Connection) -> int | None:
    if not inspect(connection).has_table(registry_schema.name):
        return None
    return connection.execute(select(func.max(registry_schema.c.version))).scalar()


def _imported(connection: Connection, root: Path) -> bool:
    statement = select(legacy_imports.c.source).where(legacy_imports.c.source == str(root))
    return connection.execute(statement).first() is not None


def _read_legacy(root: Path) -> tuple[pd.DataFrame, list[ChampionPointer]]:
    return read_registry_file(root).frame, legacy_champions(root)


def _import(connection: Connection, root: Path, legacy: tuple[pd.DataFrame, list[ChampionPointer]]) -> str:
    """Copy `registry.csv`'s rows (each run once: the last row of a run wins, as a retry recorded) and the champion
    pointers (where the database has no champion for that dataset yet) into the database."""
    frame, pointers = legacy
    known = set(connection.execute(select(runs.c.run_id)).scalars())
    rows = [row for _, row in frame.drop_duplicates("run_id", keep="last").iterrows() if row["run_id"] not in known]
    for row in rows:
        values = _run_values(row.to_dict())
        connection.execute(insert(runs).values(**values))
        connection.execute(
            insert(decisions).values(
                at=values["recorded_at"],
                dataset=values["dataset"],
                run_id=values["run_id"],
                kind=values["decision"],
                promoted=values["promoted"],
                previous_run_id=values["champion_run_id"],
                reason=values["reason"],
                who="rule",
                pointer=None,
            )
        )
    taken = set(connection.execute(select(champions.c.dataset)).scalars())
    imported = [pointer for pointer in pointers if pointer.dataset not in taken]
    for pointer in imported:
        _set_champion(connection, pointer)
        connection.execute(
            insert(decisions).values(
                at=pointer.promoted_at,
                dataset=pointer.dataset,
                run_id=pointer.run_id,
                kind=pointer.decision,
                promoted=True,
                previous_run_id=pointer.previous_run_id,
                reason=f"champion imported from champion-{pointer.dataset}.json",
                who="import",
                pointer=pointer.model_dump_json(),
            )
        )
    connection.execute(
        insert(legacy_imports).values(source=str(root), imported_at=utc_iso(), runs=len(rows), champions=len(imported))
    )
    champions_text = ", ".join(f"{pointer.dataset}: {pointer.run_id}" for pointer in imported) or "none"
    return (
        f"registry: imported {len(rows)} runs from {root / REGISTRY_FILE} and champions ({champions_text}) into "
        f"{_shown(connection.engine.url)}; the files are kept as they were and no longer written"
    )


def describe(pointer: ChampionPointer) -> dict[str, Any]:
    """A champion as plain JSON values."""
    return json.loads(pointer.model_dump_json())
