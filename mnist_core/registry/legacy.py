"""The registry as files, before it moved into a database (database.py imports them once, and leaves them as they
were): `registry.csv`, one row per run, and `champion-<dataset>.json`, each dataset's champion pointer. Read-only:
parsed line by line, so a damaged file is refused with the line named, never imported merged or short."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from mnist_core.errors import DataError
from mnist_core.layout import REGISTRY_FILE, champion_file
from mnist_core.registry.rows import (
    BOOL_COLUMNS,
    COLUMNS,
    COLUMNS_BEFORE_FINGERPRINTS,
    CSV_COLUMNS,
    FLOAT_COLUMNS,
    ChampionPointer,
)

if TYPE_CHECKING:
    import pandas as pd

CHAMPION_GLOB = champion_file("*")


def champion_path(output_root: Path, dataset: str) -> Path:
    return Path(output_root) / champion_file(dataset)


def read_champion_file(output_root: Path, dataset: str) -> ChampionPointer | None:
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
        "then no longer recorded; the champion pointer beside it still names the champion). Nothing was imported."
    )


@dataclass
class Registry:
    """`registry.csv` as read once: its text (None: no file), its rows as parsed from that text (padded to
    today's columns), and the frame built from those rows."""

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

    def champion(self, dataset: str) -> ChampionPointer | None:
        return read_champion_file(self.root, dataset)

    def row_of(self, run_id: str) -> pd.Series | None:
        """The last row recorded for `run_id`, or None."""
        earlier = self.frame.loc[self.frame["run_id"] == run_id]
        return earlier.iloc[-1] if len(earlier) else None


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
    if header not in (CSV_COLUMNS, COLUMNS_BEFORE_FINGERPRINTS):
        raise _damaged(path, f"line 1 is not the header {','.join(CSV_COLUMNS)}")
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise _damaged(path, f"line {number} has {len(row)} fields instead of {len(header)}")
    padded = [row + [""] * (len(COLUMNS) - len(row)) for row in rows[1:]]
    return Registry(root, text, padded, header)


def _frame_of(rows: list[list[str]]) -> pd.DataFrame:
    """The frame of parsed rows, typed as pandas.read_csv typed the file: numbers as floats, `promoted` as bool,
    empty text as missing."""
    import pandas as pd

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


def read_registry_file(output_root: Path) -> Registry:
    """`registry.csv` parsed once (an empty registry if there is none); DataError naming the line if damaged."""
    root = Path(output_root)
    return _parse_registry(root / REGISTRY_FILE, _registry_text(root))


def legacy_champions(output_root: Path) -> list[ChampionPointer]:
    """Every `champion-<dataset>.json` in the output root; DataError if one is damaged."""
    root = Path(output_root)
    names = sorted(path.name[len("champion-") : -len(".json")] for path in root.glob(CHAMPION_GLOB))
    return [pointer for name in names if (pointer := read_champion_file(root, name)) is not None]
