"""The registry's database under faults, each with one clear line and nothing lost: runs finishing at the same moment
(threads and processes; SQLite, and PostgreSQL when its server binaries are here), writers waiting on a busy SQLite
file, a database unreachable at start, a schema newer than the code; and the `mnist registry` command."""

import importlib.util
import json
import multiprocessing
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import insert, text

from launch.cli import main as mnist
from launch.server import free_port
from mnist_core.errors import StorageError
from mnist_core.layout import CARD_FILE, ONNX_FILE, REGISTRY_DB_FILE
from mnist_core.registry import database
from mnist_core.registry.store import RegistryStore, check_registry, read_champion, read_registry
from tests.support import PROJECT_ROOT
from tests.support.records import make_exported, record_run

# Accuracies of the runs that finish together: ties and distinct values, so some are promoted and some kept.
ACCURACIES = [0.90, 0.93, 0.91, 0.93, 0.95, 0.92, 0.95, 0.94]


def _slow_score(champion: database.ChampionPointer) -> float:
    time.sleep(0.02)  # re-scoring takes time: it happens while the run holds the write lock
    return champion.test_accuracy


def _one_run(root: str, index: int) -> tuple[str, str]:
    run_id = f"run{index}"
    run = make_exported(Path(root), run_id, ACCURACIES[index])
    return run_id, record_run(Path(root), run, 0.0, False, _slow_score).kind


def _check_finished_together(root: Path, outcomes: list[tuple[str, str]]) -> None:
    """Every row recorded once, exactly one champion (the best accuracy), each run's decision what it was told."""
    registry = read_registry(root)
    assert sorted(registry["run_id"]) == sorted(run_id for run_id, _ in outcomes)
    assert dict(zip(registry["run_id"], registry["decision"], strict=True)) == dict(outcomes)
    assert [kind for _, kind in outcomes].count("first") == 1
    champions = RegistryStore(root).read().champions()
    assert len(champions) == 1 and champions[0].test_accuracy == max(ACCURACIES)
    promoted = [row for row in RegistryStore(root).read().decisions() if row["promoted"]]
    assert promoted[-1]["run_id"] == champions[0].run_id  # the last promotion recorded is the champion
    # Each decision compared the run with the champion of its moment: the one promoted just before it.
    champion = None
    for row in RegistryStore(root).read().decisions():
        assert row["previous_run_id"] == champion
        if row["promoted"]:
            champion = row["run_id"]


def _threads(root: Path) -> list[tuple[str, str]]:
    barrier = threading.Barrier(len(ACCURACIES))
    outcomes: list[tuple[str, str]] = []

    def finish(index: int) -> None:
        barrier.wait()  # all at the same moment
        outcomes.append(_one_run(str(root), index))

    threads = [threading.Thread(target=finish, args=(index,)) for index in range(len(ACCURACIES))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return outcomes


def test_runs_finishing_together_in_threads_are_all_recorded_with_one_champion(tmp_path: Path) -> None:
    _check_finished_together(tmp_path, _threads(tmp_path))


def test_runs_finishing_together_in_processes_are_all_recorded_with_one_champion(tmp_path: Path) -> None:
    # fork: the children only need what this process already imported; each opens its own connections.
    with multiprocessing.get_context("fork").Pool(len(ACCURACIES)) as pool:
        outcomes = pool.starmap(_one_run, [(str(tmp_path), index) for index in range(len(ACCURACIES))])
    _check_finished_together(tmp_path, outcomes)
    with RegistryStore(tmp_path).engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_writers_wait_for_a_busy_database_without_an_error(tmp_path: Path) -> None:
    """A writer that holds the database (a run re-scoring the champion) for 1.5 s: the others wait their turn."""
    record_run(tmp_path, make_exported(tmp_path, "first", 0.5), 0.0, False, _slow_score)
    store = RegistryStore(tmp_path)
    errors: list[BaseException] = []

    def write(index: int) -> None:
        try:
            _one_run(str(tmp_path), index)
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    with store.locked():
        threads = [threading.Thread(target=write, args=(index,)) for index in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(1.5)
        assert len(read_registry(tmp_path)) == 1, "readers are not blocked by the writer (WAL)"
    for thread in threads:
        thread.join(timeout=60)
    assert not errors and len(read_registry(tmp_path)) == 5


def test_a_registry_file_being_created_by_another_run_is_waited_for(tmp_path: Path) -> None:
    """Until the new file is switched to WAL, a run connecting while another holds the write lock used to fail at
    once with "busy for over 600 s": SQLite does not wait for that switch (1 in ~30 concurrent first runs in CI)."""
    holder = sqlite3.connect(tmp_path / REGISTRY_DB_FILE, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("CREATE TABLE another_writer (x)")
    errors: list[BaseException] = []

    def write() -> None:
        try:
            _one_run(str(tmp_path), 0)
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    thread = threading.Thread(target=write)
    thread.start()
    time.sleep(0.5)
    assert thread.is_alive(), "the run waits while the other holds the file"
    holder.execute("COMMIT")
    holder.close()
    thread.join(timeout=60)
    assert not errors and read_registry(tmp_path)["run_id"].tolist() == ["run0"]


def test_a_writer_that_waits_too_long_gets_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(database, "BUSY_SECONDS", 0.3)  # read when the engine is made: a fresh root's
    root = tmp_path / "runs"
    record_run(root, make_exported(root, "first", 0.5), 0.0, False, _slow_score)
    outcome: list[BaseException] = []
    with RegistryStore(root).locked():
        thread = threading.Thread(target=lambda: outcome.append(pytest.raises(StorageError, _one_run, str(root), 1)))
        thread.start()
        thread.join(timeout=30)
    [caught] = outcome
    message = str(caught.value)  # type: ignore[attr-defined]
    assert "busy for over 0.3 s" in message and "nothing was recorded" in message and "\n" not in message
    assert read_registry(root)["run_id"].tolist() == ["first"]


def test_a_newer_schema_is_refused_in_one_line(tmp_path: Path) -> None:
    record_run(tmp_path, make_exported(tmp_path, "r1", 0.9), 0.0, False, _slow_score)
    with RegistryStore(tmp_path).engine.begin() as connection:
        connection.execute(insert(database.registry_schema).values(version=99, migrated_at="2030-01-01T00:00:00Z"))
    database._prepared.clear()  # a new process: the schema is checked when it opens the database
    with pytest.raises(StorageError, match=r"registry\.db has schema version 99, newer than this code's 1") as caught:
        check_registry(tmp_path, "mnist")
    assert "\n" not in str(caught.value)
    with pytest.raises(StorageError, match="schema version 99"):
        record_run(tmp_path, make_exported(tmp_path, "r2", 0.95), 0.0, False, _slow_score)
    with RegistryStore(tmp_path).engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM runs")).scalar() == 1


def test_an_unreachable_database_fails_the_preflight_in_seconds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run refuses to start (before any data or training) when its registry cannot be reached."""
    from mnist_core.config import RunParams
    from mnist_core.preflight import preflight

    if importlib.util.find_spec("psycopg") is None:
        pytest.skip("psycopg (the PostgreSQL driver, extra `postgres`) is not installed")
    monkeypatch.setenv(database.URL_VARIABLE, f"postgresql+psycopg://mnist:secret@127.0.0.1:{free_port()}/registry")
    params = RunParams(data_dir=tmp_path / "data", output_dir=tmp_path / "runs", device="cpu")
    started = time.monotonic()
    with pytest.raises(StorageError) as caught:
        preflight(params)
    message = str(caught.value)
    assert time.monotonic() - started < 10
    assert message.startswith("registry database postgresql+psycopg://mnist:***@127.0.0.1:") and "\n" not in message
    assert "secret" not in message and not list((tmp_path / "runs").iterdir())


def test_an_sqlite_file_that_cannot_be_made_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv(database.URL_VARIABLE, f"sqlite:///{tmp_path / 'a-file' / 'registry.db'}")
    with pytest.raises(StorageError, match=r"a-file/registry\.db: cannot create its folder"):
        record_run(tmp_path, make_exported(tmp_path, "r1", 0.9), 0.0, False, _slow_score)


# --- PostgreSQL ------------------------------------------------------------------------------------------------


@pytest.fixture
def registry_on_postgres(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """MNIST_REGISTRY_URL naming a new database in the session's throwaway PostgreSQL cluster."""
    if importlib.util.find_spec("psycopg") is None:
        pytest.skip("psycopg (the PostgreSQL driver, extra `postgres`) is not installed")
    cluster = request.getfixturevalue("postgres_cluster")
    if cluster.port is None:
        pytest.skip(cluster.why_not)
    url = cluster.create_database(f"registry_{uuid.uuid4().hex[:8]}").replace("+asyncpg", "+psycopg")
    monkeypatch.setenv(database.URL_VARIABLE, url)
    yield url
    engine = database.engine_for(url)
    database.metadata.drop_all(engine)
    engine.dispose()


@pytest.mark.slow
def test_runs_finishing_together_on_postgres(registry_on_postgres: str, tmp_path: Path) -> None:
    _check_finished_together(tmp_path, _threads(tmp_path))
    assert not (tmp_path / "registry.db").exists()


# --- mnist registry --------------------------------------------------------------------------------------------


def test_the_registry_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "runs"
    for run_id, accuracy in (("r1", 0.90), ("r2", 0.93), ("r3", 0.92)):
        record_run(root, make_exported(root, run_id, accuracy), 0.0, False, _slow_score)
    where = ["--output-dir", str(root)]
    capsys.readouterr()

    assert mnist(["registry", "ls", *where]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["run_id", "recorded_at", "dataset", "test_accuracy", "decision", "champion_run_id"]
    assert [line.split()[0] for line in lines[1:]] == ["r1", "r2", "r3"] and "93.00%" in lines[2]
    assert mnist(["registry", "ls", "--json", *where]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["decision"] for row in rows] == ["first", "better", "kept"]

    # A run whose folder is gone (and no store holds it) is not made champion: no server could load it.
    assert mnist(["registry", "promote", "r3", "--reason", "better on the field images", *where]) == 1
    assert capsys.readouterr().err == (
        f"mnist registry: error: r3: its run folder {root / 'r3'} has no model_card.json or model.onnx (deleted, "
        "moved, or on another machine) and no artifact store holds its files: no server could load it; nothing "
        "changed\n"
    )
    assert read_champion(root, "mnist").run_id == "r2"  # type: ignore[union-attr]
    for run_id in ("r2", "r3"):  # made-up runs are recorded without their folders
        (root / run_id).mkdir()
        (root / run_id / CARD_FILE).write_text("{}")
        (root / run_id / ONNX_FILE).write_bytes(b"")
    assert mnist(["registry", "promote", "r3", "--reason", "better on the field images", *where]) == 0
    assert "mnist champion: r3 (manual" in capsys.readouterr().out
    champion = read_champion(root, "mnist")
    assert champion is not None and (champion.run_id, champion.decision, champion.previous_run_id) == (
        "r3",
        "manual",
        "r2",
    )
    assert mnist(["registry", "show", "r3", "--json", *where]) == 0
    shown = json.loads(capsys.readouterr().out)
    manual = shown["decisions"][-1]
    assert manual["kind"] == "manual" and "better on the field images" in manual["reason"] and manual["who"]

    assert mnist(["registry", "rollback", *where]) == 0
    assert "mnist champion: r2 (rollback" in capsys.readouterr().out
    assert read_champion(root, "mnist").run_id == "r2"  # type: ignore[union-attr]
    assert mnist(["registry", "champion", "--json", *where]) == 0
    assert json.loads(capsys.readouterr().out)["decision"] == "rollback"
    assert [row["kind"] for row in RegistryStore(root).read().decisions()][-2:] == ["manual", "rollback"]

    assert mnist(["registry", "promote", "nope", "--reason", "x", *where]) == 1
    assert capsys.readouterr().err.startswith("mnist registry: error: no run 'nope' in the registry")
    # What the runs table holds, pandas reads as it read registry.csv.
    frame = pd.read_sql("runs", RegistryStore(root).engine)
    assert frame["run_id"].tolist() == ["r1", "r2", "r3"] and frame["promoted"].tolist() == [True, True, False]


def test_a_missing_output_folder_or_a_folder_for_a_database_is_an_error_not_an_empty_registry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found by a fault battery: both read as "(no runs recorded)" and "no champion yet", status 0; and by a docs
    check: `mnist feedback` and `mnist monitor` answered the same, leaving the folder made, a database in it."""
    typo = tmp_path / "typo"
    for command in (["registry", "ls"], ["feedback", "ls"], ["feedback", "export", str(tmp_path / "out")], ["monitor"]):
        assert mnist([*command, "--output-dir", str(typo)]) == 1
        assert capsys.readouterr().err == (
            f"mnist {command[0]}: error: {typo}: no such folder (--output-dir names the runs' folder; a sqlite "
            "--url, the database's)\n"
        )
    assert not typo.exists() and not (tmp_path / "out").exists()
    (tmp_path / "odd" / REGISTRY_DB_FILE).mkdir(parents=True)
    for command in (["ls"], ["champion"], ["show", "r1"]):
        assert mnist(["registry", *command, "--output-dir", str(tmp_path / "odd")]) == 1
        assert "registry.db: there is something that is not a file there" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert mnist(["registry", "ls", "--output-dir", str(tmp_path / "empty")]) == 0
    assert capsys.readouterr().out == "(no runs recorded)\n"
    # A reason is one line of text (`show` printed a line break or a terminal's colour codes as they were).
    for reason in ("", "  ", "two\nlines", "\x1b[31mred"):
        with pytest.raises(SystemExit) as usage:
            mnist(["registry", "promote", "r1", "--reason", reason, "--output-dir", str(tmp_path / "empty")])
        assert usage.value.code == 2 and "argument --reason" in capsys.readouterr().err


def test_registry_help_answers_without_pandas_or_sqlalchemy() -> None:
    code = (
        "import sys\nfrom launch.cli import main\ntry:\n    main(['registry', '--help'])\n"
        "except SystemExit:\n    pass\n"
        "print('LOADED', [name for name in ('pandas', 'sqlalchemy', 'torch') if name in sys.modules])"
    )
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "mnist registry ls" in done.stdout and "LOADED []" in done.stdout, done.stderr
    assert time.monotonic() - started < 5


def test_a_registry_on_a_read_only_mount_is_read(tmp_path: Path) -> None:
    """Found by a fault battery: a registry closed cleanly (SQLite removes its -wal and -shm files) and then mounted
    read-only (a dashboard's copy, read-only media) could not be opened: "unable to open database file"."""
    root = tmp_path / "runs #1 %20 ?"  # characters a URL must escape (they made the database elsewhere)
    for run_id, accuracy in (("r1", 0.90), ("r2", 0.93)):
        record_run(root, make_exported(root, run_id, accuracy), 0.0, False, _slow_score)
    database.engine_for(database.registry_url(root.resolve())).dispose()  # the last connection gone: -wal, -shm too
    assert sorted(path.name for path in root.iterdir()) == [REGISTRY_DB_FILE]
    read_only = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
    command = [sys.executable, "-m", "launch.cli", "registry", "ls", "--output-dir", str(root)]
    try:
        done = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", read_only, str(root), *command],
            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    except FileNotFoundError:
        pytest.skip("`unshare` (util-linux) is not installed")
    if "mount" in done.stderr and done.returncode != 0 and "registry" not in done.stderr:
        pytest.skip(f"no read-only mount here: {done.stderr[-200:]}")
    assert done.returncode == 0, done.stderr
    assert [line.split()[0] for line in done.stdout.splitlines()[1:]] == ["r1", "r2"]
    assert sorted(path.name for path in root.iterdir()) == [REGISTRY_DB_FILE]
