"""The promotion rule, the registry (runs, decisions, champion aliases in its database) and the import of the files it
had before (no Prefect involved)."""

import json
import multiprocessing
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mnist_core.errors import DataError
from mnist_core.files import FILE_MODE
from mnist_core.layout import REGISTRY_DB_FILE
from mnist_core.registry import database
from mnist_core.registry.rule import decide
from mnist_core.registry.store import (
    COLUMNS,
    COLUMNS_BEFORE_FINGERPRINTS,
    REGISTRY_FILE,
    ChampionPointer,
    RegistryStore,
    champion_path,
    promotion_markdown,
    read_champion,
    read_registry,
)
from tests.support import PROJECT_ROOT
from tests.support.records import SHA, legacy_files, record_run
from tests.support.records import make_exported as make_run


def stored_accuracy(champion: ChampionPointer) -> float:
    """A scorer that trusts the pointer's figure: enough where the model itself is not under test."""
    return champion.test_accuracy


@pytest.mark.parametrize(
    ("challenger", "champion", "margin", "force", "promoted", "kind"),
    [
        (0.90, None, 0.0, False, True, "first"),
        (0.10, None, 0.5, False, True, "first"),
        (0.97, 0.96, 0.0, False, True, "better"),
        (0.97, 0.96, 0.01, False, True, "better"),  # exactly the margin (float rounding absorbed)
        (0.9699, 0.96, 0.01, False, False, "kept"),  # just short of the margin
        (0.96, 0.96, 0.0, False, False, "kept"),  # a tie keeps the champion
        (0.95, 0.96, 0.0, False, False, "kept"),
        (0.50, 0.96, 0.0, True, True, "forced"),
    ],
)
def test_promotion_rule(
    challenger: float, champion: float | None, margin: float, force: bool, promoted: bool, kind: str
) -> None:
    decision = decide(challenger, champion, margin, force, champion_run_id=None if champion is None else "old")
    assert (decision.promoted, decision.kind) == (promoted, kind)
    assert f"{challenger:.2%}" in decision.reason
    if champion is not None:
        assert f"{champion:.2%}" in decision.reason and "old" in decision.reason


@given(
    challenger=st.integers(0, 10_000),
    champion=st.integers(0, 10_000),
    margin=st.integers(0, 100),
    force=st.booleans(),
)
def test_promotion_rule_matches_counts(challenger: int, champion: int, margin: int, force: bool) -> None:
    # Accuracies are correct/10000 fractions; in counts the rule is exact integer arithmetic.
    decision = decide(challenger / 10_000, champion / 10_000, margin / 10_000, force, "old")
    assert decision.promoted == (force or (challenger > champion and challenger - champion >= margin))


def test_negative_margin_is_rejected() -> None:
    with pytest.raises(ValueError, match="margin"):
        decide(0.9, 0.8, -0.1)


def test_first_run_becomes_champion_and_is_recorded(tmp_path: Path) -> None:
    decision = record_run(tmp_path, make_run(tmp_path, "r1", 0.91), 0.0, False, stored_accuracy)
    assert decision.promoted and decision.kind == "first"
    champion = read_champion(tmp_path, "mnist")
    assert champion is not None and champion.run_id == "r1" and champion.test_accuracy == 0.91
    assert list(read_registry(tmp_path).columns) == COLUMNS
    # pandas reads the table as it read registry.csv (plus `seq`, the insertion order, last).
    registry = pd.read_sql("runs", RegistryStore(tmp_path).engine)
    assert list(registry.columns) == [*COLUMNS, "seq"]
    row = registry.iloc[0]
    assert (row["run_id"], row["decision"], bool(row["promoted"])) == ("r1", "first", True)
    assert row["sha256_test_images"] == SHA["test_images"] and row["params_digest"] == "f" * 64
    assert row["test_accuracy"] == 0.91 and row["best_val_accuracy"] == 0.91
    # Readable by the team (umask); no registry.csv or pointer file is written any more.
    assert (tmp_path / REGISTRY_DB_FILE).stat().st_mode & 0o777 == FILE_MODE
    assert not (tmp_path / REGISTRY_FILE).exists() and not champion_path(tmp_path, "mnist").exists()


def test_a_registry_from_before_fingerprints_is_read_and_upgraded(tmp_path: Path) -> None:
    """A registry.csv from before the fingerprint columns (and its pointer) is imported, once; the files stay."""
    root = tmp_path / "runs"
    legacy_files(tmp_path / "old", root, [("r1", 0.91)], COLUMNS_BEFORE_FINGERPRINTS)
    files_before = {path.name: path.read_bytes() for path in root.iterdir()}
    assert read_registry(root)["fingerprint"].isna().all() and read_registry(root)["run_id"].tolist() == ["r1"]
    record_run(root, make_run(root, "r2", 0.95), 0.0, False, stored_accuracy)
    upgraded = read_registry(root)
    assert list(upgraded.columns) == COLUMNS and upgraded["run_id"].tolist() == ["r1", "r2"]
    assert upgraded["decision"].tolist() == ["first", "better"] and upgraded["fingerprint"].isna().tolist()[0]
    assert {path.name: path.read_bytes() for path in root.iterdir() if path.name in files_before} == files_before
    assert RegistryStore(root).read().decisions(run_id="r1")[0]["who"] == "rule"


def test_the_import_is_reported_once_in_one_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "runs"
    legacy_files(tmp_path / "old", root, [("r1", 0.90), ("r2", 0.93), ("r3", 0.92)])
    with caplog.at_level("WARNING", logger=database.__name__):
        assert read_champion(root, "mnist").run_id == "r2"  # type: ignore[union-attr]
        database._prepared.clear()  # as a new process would: the import is recorded in the database
        assert read_registry(root)["run_id"].tolist() == ["r1", "r2", "r3"]
    [line] = [record.getMessage() for record in caplog.records]
    assert line.startswith(f"registry: imported 3 runs from {root / REGISTRY_FILE} and champions (mnist: r2)")
    assert "\n" not in line and "kept as they were" in line


def test_worse_run_keeps_champion_and_says_why(tmp_path: Path) -> None:
    record_run(tmp_path, make_run(tmp_path, "r1", 0.91), 0.0, False, stored_accuracy)
    pointer_before = read_champion(tmp_path, "mnist")
    decision = record_run(tmp_path, make_run(tmp_path, "r2", 0.90), 0.0, False, stored_accuracy)
    assert not decision.promoted and decision.kind == "kept"
    assert "91.00%" in decision.reason and "90.00%" in decision.reason and "r1" in decision.reason
    assert read_champion(tmp_path, "mnist") == pointer_before
    registry = read_registry(tmp_path)
    assert registry["run_id"].tolist() == ["r1", "r2"]
    assert registry["decision"].tolist() == ["first", "kept"]
    assert registry.iloc[1]["champion_run_id"] == "r1" and registry.iloc[1]["champion_test_accuracy"] == 0.91
    section = promotion_markdown(decision, "mnist", run_id="r2")
    assert "not promoted" in section and "91.00%" in section and "90.00%" in section
    # Both rows of the table name their run (the challenger's cell was empty).
    assert "| challenger (this run) | r2 | 90.00% |" in section and "| champion before this run | r1 |" in section


def test_margin_and_force_are_applied_and_recorded(tmp_path: Path) -> None:
    record_run(tmp_path, make_run(tmp_path, "r1", 0.90), 0.0, False, stored_accuracy)
    assert not record_run(tmp_path, make_run(tmp_path, "r2", 0.905), 0.01, False, stored_accuracy).promoted
    assert record_run(tmp_path, make_run(tmp_path, "r3", 0.915), 0.01, False, stored_accuracy).kind == "better"
    assert record_run(tmp_path, make_run(tmp_path, "r4", 0.10), 0.0, True, stored_accuracy).kind == "forced"
    champion = read_champion(tmp_path, "mnist")
    assert champion is not None and champion.run_id == "r4" and champion.previous_run_id == "r3"
    registry = read_registry(tmp_path)
    assert registry["decision"].tolist() == ["first", "kept", "better", "forced"]
    assert registry["margin"].tolist() == [0.0, 0.01, 0.01, 0.0]


def test_champion_is_rescored_not_trusted(tmp_path: Path) -> None:
    """The champion's stored figure is ignored: the scorer's figure on today's test set decides."""
    record_run(tmp_path, make_run(tmp_path, "r1", 0.99), 0.0, False, stored_accuracy)
    seen: list[str] = []

    def rescored(champion: ChampionPointer) -> float:
        seen.append(str(champion.model))
        return 0.50

    decision = record_run(tmp_path, make_run(tmp_path, "r2", 0.80), 0.0, False, rescored)
    assert seen == [str(tmp_path / "r1" / "model.safetensors")]
    assert decision.promoted and decision.champion_accuracy == 0.50


def test_unusable_champion_is_replaced_with_a_reason(tmp_path: Path) -> None:
    record_run(tmp_path, make_run(tmp_path, "r1", 0.99), 0.0, False, stored_accuracy)

    def broken(champion: ChampionPointer) -> float:
        raise DataError(f"{champion.model}: missing")

    decision = record_run(tmp_path, make_run(tmp_path, "r2", 0.80), 0.0, False, broken)
    assert decision.promoted and decision.kind == "replaced" and "r1 could not be evaluated" in decision.reason
    champion = read_champion(tmp_path, "mnist")
    assert champion is not None and (champion.run_id, champion.decision) == ("r2", "replaced")
    assert read_registry(tmp_path)["decision"].tolist() == ["first", "replaced"]
    assert "promoted (the champion could not be evaluated)" in promotion_markdown(decision, "mnist")


def test_champions_are_per_dataset(tmp_path: Path) -> None:
    record_run(tmp_path, make_run(tmp_path, "m1", 0.98), 0.0, False, stored_accuracy)
    fashion = make_run(tmp_path, "f1", 0.85, dataset="fashion-mnist")
    assert record_run(tmp_path, fashion, 0.0, False, stored_accuracy).kind == "first"
    assert read_champion(tmp_path, "mnist").run_id == "m1"  # type: ignore[union-attr]
    assert read_champion(tmp_path, "fashion-mnist").run_id == "f1"  # type: ignore[union-attr]


CRASH_SCRIPT = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from mnist_core.registry import database
    from tests.support.records import make_exported, record_run
    root = Path(sys.argv[1])
    real_set_champion = database._set_champion

    def crash_mid_transaction(connection, pointer):
        real_set_champion(connection, pointer)  # the run's row, its decision and the new alias written, uncommitted
        os._exit(17)  # a hard crash: no finally blocks, no rollback, no cleanup

    database._set_champion = crash_mid_transaction
    run = make_exported(root, "r2", 0.99)
    record_run(root, run, 0.0, False, lambda champion: champion.test_accuracy)
    """
)


def test_crash_before_pointer_replace_keeps_old_champion(tmp_path: Path) -> None:
    """A run killed in the middle of its promotion's transaction: nothing of it is recorded."""
    record_run(tmp_path, make_run(tmp_path, "r1", 0.90), 0.0, False, stored_accuracy)
    (tmp_path / "r2").mkdir()
    (tmp_path / "r2" / "model.safetensors").write_bytes(b"weights")
    pointer_before = read_champion(tmp_path, "mnist")

    crashed = subprocess.run([sys.executable, "-c", CRASH_SCRIPT, str(tmp_path)], cwd=PROJECT_ROOT, timeout=120)

    assert crashed.returncode == 17
    assert read_champion(tmp_path, "mnist") == pointer_before
    assert pointer_before is not None and pointer_before.run_id == "r1"
    assert read_registry(tmp_path)["run_id"].tolist() == ["r1"]
    assert [row["run_id"] for row in RegistryStore(tmp_path).read().decisions()] == ["r1"]
    # The next run is not confused by the crash.
    decision = record_run(tmp_path, make_run(tmp_path, "r3", 0.95), 0.0, False, stored_accuracy)
    assert decision.kind == "better" and decision.champion_run_id == "r1"
    assert read_registry(tmp_path)["run_id"].tolist() == ["r1", "r3"]


def _race(root: str, run_id: str) -> str:
    def slow_score(champion: ChampionPointer) -> float:
        time.sleep(0.05)  # widens the window in which an unlocked compare-and-promote would let two runs win
        return champion.test_accuracy

    return record_run(Path(root), make_run(Path(root), run_id, 0.95), 0.0, False, slow_score).kind


def test_concurrent_runs_cannot_both_win_or_lose_rows(tmp_path: Path) -> None:
    # fork: the children only need what this process already imported, so they start in milliseconds.
    run_ids = [f"r{i}" for i in range(6)]
    with multiprocessing.get_context("fork").Pool(len(run_ids)) as pool:
        kinds = pool.starmap(_race, [(str(tmp_path), run_id) for run_id in run_ids])
    # Equal accuracies: whoever takes the lock first becomes champion; a tie keeps it, so every other run loses.
    assert sorted(kinds) == ["first"] + ["kept"] * (len(run_ids) - 1)
    registry = read_registry(tmp_path)
    assert sorted(registry["run_id"]) == run_ids
    winner = registry.loc[registry["decision"] == "first", "run_id"].item()
    assert read_champion(tmp_path, "mnist").run_id == winner  # type: ignore[union-attr]
    assert (registry.loc[registry["decision"] == "kept", "champion_run_id"] == winner).all()
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".part")]


def _three_runs(root: Path) -> None:
    """registry.csv and champion-mnist.json as the registry wrote them before it moved into its database."""
    legacy_files(root.parent / f"{root.name}-source", root, [("r1", 0.90), ("r2", 0.93), ("r3", 0.92)])


@pytest.mark.parametrize("damage", ["cut", "not-json", "missing-field"])
def test_damaged_champion_pointer_is_a_clear_error(damage: str, tmp_path: Path) -> None:
    root = tmp_path / "runs"
    _three_runs(root)
    pointer = champion_path(root, "mnist")
    text = pointer.read_text()
    damaged = {
        "cut": text[: len(text) // 2],
        "not-json": "<html>proxy error</html>",
        "missing-field": json.dumps({k: v for k, v in json.loads(text).items() if k != "model"}),
    }[damage]
    pointer.write_text(damaged)
    registry_before = (root / REGISTRY_FILE).read_bytes()
    with pytest.raises(DataError, match=r"champion-mnist\.json: damaged champion pointer .*delete it"):
        record_run(root, make_run(root, "r4", 0.95), 0.0, False, stored_accuracy)
    assert pointer.read_text() == damaged and (root / REGISTRY_FILE).read_bytes() == registry_before
    assert not (root / REGISTRY_DB_FILE).exists(), "nothing is imported from damaged files"


@pytest.mark.parametrize("seed", range(12))
def test_registry_cut_at_any_byte_is_refused_never_merged(seed: int, tmp_path: Path) -> None:
    """A registry.csv cut at a random byte (a full disk, a sync tool) before its import: the import refuses it,
    naming the file and the line, and changes nothing; cut exactly at a line end, it is a shorter valid registry
    and rows stay apart."""
    import random

    root = tmp_path / "runs"
    _three_runs(root)
    path, pointer = root / REGISTRY_FILE, champion_path(root, "mnist")
    text = path.read_text()
    cut = random.Random(seed).randrange(0, len(text))
    path.write_text(text[:cut])
    damaged, pointer_before = path.read_bytes(), pointer.read_bytes()
    header_end = text.index("\n") + 1
    if cut >= header_end and text[cut - 1] == "\n":  # whole rows dropped, by whoever cut it: nothing to tell
        record_run(root, make_run(root, "r4", 0.99), 0.0, False, stored_accuracy)
        rows = read_registry(root)
        assert rows["run_id"].tolist()[-1] == "r4" and rows["decision"].tolist()[-1] == "better"
        assert len(rows) == text[:cut].count("\n")  # the header plus each complete row, and r4's
        return
    with pytest.raises(DataError, match=r"registry\.csv: damaged registry: .*(line \d+|empty)"):
        record_run(root, make_run(root, "r4", 0.99), 0.0, False, stored_accuracy)
    with pytest.raises(DataError, match="restore it from a backup, or fix or delete the line named"):
        read_registry(root)
    assert path.read_bytes() == damaged and pointer.read_bytes() == pointer_before
    assert not (root / REGISTRY_DB_FILE).exists(), "nothing is imported from a damaged registry"
    # The repair the message names: drop the incomplete last line (or the whole file, cut inside its header).
    repaired = text[: text.rfind("\n", 0, cut) + 1] if cut >= header_end else ""
    if repaired:
        path.write_text(repaired)
    else:
        path.unlink()
    assert record_run(root, make_run(root, "r4", 0.99), 0.0, False, stored_accuracy).promoted
    assert read_registry(root)["run_id"].tolist()[-1] == "r4"


def test_a_line_that_is_not_csv_is_named(tmp_path: Path) -> None:
    """Found by a new user: "fix or delete the line named" followed a message that named no line."""
    root = tmp_path / "runs"
    _three_runs(root)
    path = root / REGISTRY_FILE
    lines = path.read_text().splitlines(keepends=True)
    with open(path, "a") as registry:
        registry.write('garbage,"unterminated\n')
    with pytest.raises(DataError, match=rf"damaged registry: line {len(lines) + 1} is not valid CSV"):
        read_registry(root)
    # In the middle (found in review: the reader runs to the end, and the valid last line was named).
    path.write_text("".join([*lines[:2], 'garbage,"unterminated\n', *lines[2:]]))
    with pytest.raises(DataError, match="damaged registry: line 3 is not valid CSV"):
        read_registry(root)


@pytest.mark.parametrize("seed", range(6))
def test_champion_pointer_cut_at_any_byte_is_refused(seed: int, tmp_path: Path) -> None:
    import random

    root = tmp_path / "runs"
    _three_runs(root)
    pointer = champion_path(root, "mnist")
    text = pointer.read_text()
    pointer.write_text(text[: random.Random(seed).randrange(0, len(text) - 2)])  # "}\n" ends it: cut before
    registry_before = (root / REGISTRY_FILE).read_bytes()
    with pytest.raises(DataError, match=r"champion-mnist\.json: damaged champion pointer .*delete it"):
        record_run(root, make_run(root, "r4", 0.99), 0.0, False, stored_accuracy)
    assert (root / REGISTRY_FILE).read_bytes() == registry_before


def test_a_row_lost_to_a_full_disk_is_written_by_the_retry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fills up in the middle of a promotion: the transaction records nothing (no champion without its
    row, as the two files could leave). The error names the database; the retry records the decision, once."""
    import sqlite3

    from sqlalchemy.exc import OperationalError

    from mnist_core.errors import StorageError

    record_run(tmp_path, make_run(tmp_path, "r1", 0.90), 0.0, False, stored_accuracy)

    def full(connection: object, pointer: object) -> None:
        raise OperationalError("INSERT INTO champions", {}, sqlite3.OperationalError("database or disk is full"))

    monkeypatch.setattr(database, "_set_champion", full)
    with pytest.raises(StorageError, match=r"registry database sqlite:///.*registry\.db: database or disk is full"):
        record_run(tmp_path, make_run(tmp_path, "r2", 0.95), 0.0, False, stored_accuracy)
    assert read_champion(tmp_path, "mnist").run_id == "r1"  # type: ignore[union-attr]
    assert read_registry(tmp_path)["run_id"].tolist() == ["r1"]

    monkeypatch.undo()
    for _ in range(2):  # the retry, then a second one: one row, the same decision
        promotion = record_run(tmp_path, make_run(tmp_path, "r2", 0.95), 0.0, False, stored_accuracy)
        assert (promotion.kind, promotion.champion_run_id, promotion.champion_accuracy) == ("better", "r1", 0.90)
    registry = read_registry(tmp_path)
    assert registry["run_id"].tolist() == ["r1", "r2"] and registry["decision"].tolist() == ["first", "better"]
    assert registry.iloc[1]["champion_run_id"] == "r1"
