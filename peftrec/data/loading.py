"""Load a user's own interactions, items and users files (CSV, TSV, Parquet, JSON Lines) through
Hugging Face `datasets`, validating every value with its position in the file."""

from __future__ import annotations

import codecs
import csv
import logging
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from peftrec.data.errors import DataError
from peftrec.data.tables import Interactions, RecDataset

logger = logging.getLogger(__name__)

_FORMATS = {".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".jsonl": "json", ".json": "json"}


@dataclass
class ColumnMap:
    """Column names in the user's files."""

    user: str = "user_id"
    """User id column of the interactions file."""
    item: str = "item_id"
    """Item id column of the interactions file."""
    rating: str = "rating"
    """Rating column of the interactions file."""
    timestamp: str | None = "timestamp"
    """Timestamp column of the interactions file; optional: when absent, timestamps are None."""
    item_id: str = "item_id"
    """Id column of the items file."""
    item_text_fields: list[str] | None = None
    """Items-file columns that become item text fields; None = every non-id column."""
    user_id: str = "user_id"
    """Id column of the users file; every other column becomes a user field."""


def load_files(
    interactions: str | Path,
    items: str | Path | None = None,
    users: str | Path | None = None,
    *,
    columns: ColumnMap | None = None,
    name: str | None = None,
) -> RecDataset:
    """Load and validate a dataset from files; the format follows each file's extension.

    Without an items (users) file, items (users) are numbered in order of first appearance
    and have no text fields. Ids are read as strings with surrounding spaces removed.
    """
    cols = columns or ColumnMap()
    inter = _Table.read(interactions)
    inter.require([cols.user, cols.item, cols.rating])
    user_col = inter.ids(cols.user, "user")
    item_col = inter.ids(cols.item, "item")
    ratings = inter.numbers(cols.rating, float(np.finfo(np.float32).max)).astype(np.float32)
    timestamps = None
    if cols.timestamp is not None and cols.timestamp in inter.columns:
        timestamps = inter.numbers(cols.timestamp)

    item_ids, item_fields = list(dict.fromkeys(item_col)), {}
    if items is not None:
        item_ids, item_fields = _read_entities(items, cols.item_id, cols.item_text_fields, "item")
    user_ids, user_fields = list(dict.fromkeys(user_col)), {}
    if users is not None:
        user_ids, user_fields = _read_entities(users, cols.user_id, None, "user")

    return RecDataset(
        name=name or Path(interactions).stem,
        user_ids=user_ids,
        item_ids=item_ids,
        item_fields=item_fields,
        user_fields=user_fields,
        interactions=Interactions(
            users=inter.encode(cols.user, user_col, user_ids, "user", users),
            items=inter.encode(cols.item, item_col, item_ids, "item", items),
            ratings=ratings,
            timestamps=timestamps,
        ),
    )


def _read_entities(
    path: str | Path, id_column: str, fields: list[str] | None, kind: str
) -> tuple[list[str], dict[str, list[str]]]:
    """Ids and text fields of an items or users file; ids must be unique."""
    table = _Table.read(path)
    fields = [c for c in table.columns if c != id_column] if fields is None else fields
    table.require([id_column, *fields])
    ids = table.ids(id_column, kind)
    first: dict[str, int] = {}
    repeats = [row for row, i in enumerate(ids) if first.setdefault(i, row) != row]
    if repeats:
        table.fail(
            repeats,
            id_column,
            lambda r: f"duplicate {kind} id {ids[r]!r}, first at {table.where(first[ids[r]])}",
        )
    return ids, {field: table.strings(field) for field in fields}


class _Table:
    """One file's columns as Python lists, with file positions for error messages."""

    def __init__(self, path: Path, columns: dict[str, list[Any]]):
        self.path = path
        self.columns = columns
        self._lines: list[int] | None = None

    @classmethod
    def read(cls, path: str | Path) -> _Table:
        path = Path(path)
        builder = _FORMATS.get(path.suffix.lower())
        if builder is None:
            raise DataError(
                f"{path}: unsupported file type {path.suffix!r}; use one of {', '.join(_FORMATS)}"
            )
        if not path.is_file():
            raise DataError(f"{path}: file not found")
        if path.stat().st_size == 0:
            raise DataError(f"{path}: file is empty")
        if builder in ("csv", "json"):
            _check_utf8(path)
        options: dict[str, Any] = {}
        if builder == "csv":
            header = _header(path)
            repeated = next((c for k, c in enumerate(header) if c in header[:k]), None)
            if repeated is not None:
                raise DataError(f"{path}: duplicate column {repeated!r} in the header")
            options = {
                "sep": "\t" if path.suffix.lower() == ".tsv" else ",",
                "quoting": csv.QUOTE_NONE if path.suffix.lower() == ".tsv" else csv.QUOTE_MINIMAL,
                "keep_default_na": False,
                "na_filter": False,
                "features": datasets.Features({c: datasets.Value("string") for c in header}),
            }
        with tempfile.TemporaryDirectory(prefix="peftrec-") as cache:
            try:
                table = datasets.load_dataset(
                    builder,
                    data_files=str(path),
                    split="train",
                    cache_dir=cache,
                    keep_in_memory=True,
                    **options,
                )
            except Exception as err:  # the builders raise many types; all mean "unreadable"
                if not _has_rows(path):
                    raise DataError(f"{path}: no data rows") from None
                raise DataError(
                    f"{path}: cannot read as {builder}: {err.__cause__ or err}"
                ) from err
            columns = table.to_dict()
        if not columns or not len(next(iter(columns.values()))):
            raise DataError(f"{path}: no data rows")
        return cls(path, columns)

    def require(self, names: Sequence[str]) -> None:
        missing = [n for n in names if n not in self.columns]
        if missing:
            raise DataError(
                f"{self.path}: missing column(s) {', '.join(map(repr, missing))}; found columns: "
                f"{', '.join(map(repr, self.columns))} (map them with ColumnMap)"
            )

    def line(self, row: int) -> int | None:
        """1-based file line where data row `row` starts (None for Parquet or a JSON array)."""
        if self._lines is None:
            self._lines = _record_lines(self.path)
        return self._lines[row] if row < len(self._lines) else None

    def where(self, row: int) -> str:
        line = self.line(row)
        return f"{self.path}, line {line} (row {row})" if line else f"{self.path}, row {row}"

    def fail(self, rows: Sequence[int], column: str, problem: Callable[[int], str]) -> None:
        """Raise for the first bad row, counting the others with the same problem."""
        more = len(rows) - 1
        tail = f" ({more} more row{'s' * (more > 1)} with the same problem)" if more else ""
        raise DataError(f"{self.where(rows[0])}, column {column!r}: {problem(rows[0])}{tail}")

    def strings(self, column: str) -> list[str]:
        return [_text(v) for v in self.columns[column]]

    def ids(self, column: str, kind: str) -> list[str]:
        values = self.strings(column)
        empty = [row for row, v in enumerate(values) if not v]
        if empty:
            self.fail(empty, column, lambda r: f"empty {kind} id")
        return values

    def numbers(self, column: str, limit: float = np.inf) -> np.ndarray:
        """The column as float64; raises on anything that is not a finite number of magnitude
        at most `limit`."""
        raw = self.columns[column]
        odd = [row for row, v in enumerate(raw) if isinstance(v, (bool, list, dict))]
        if odd:
            self.fail(odd, column, lambda r: f"{raw[r]!r} is not a number")
        try:
            values = np.asarray(raw, dtype=np.float64)
        except (TypeError, ValueError):
            values = np.array([_float(v) for v in raw])
        bad = np.flatnonzero(~np.isfinite(values))
        if len(bad):
            self.fail(bad.tolist(), column, lambda r: _number_problem(raw[r]))
        big = np.flatnonzero(np.abs(values) > limit)
        if len(big):
            self.fail(
                big.tolist(),
                column,
                lambda r: f"{raw[r]!r} is too large (the limit is {limit:.4g})",
            )
        return values

    def encode(
        self, column: str, values: list[str], ids: list[str], kind: str, source: str | Path | None
    ) -> np.ndarray:
        """Indices of `values` in `ids`; raises for an id that is not there."""
        index = {i: k for k, i in enumerate(ids)}
        codes = np.array([index.get(v, -1) for v in values], dtype=np.int64)
        unknown = np.flatnonzero(codes < 0)
        if len(unknown):
            self.fail(
                unknown.tolist(), column, lambda r: f"{kind} id {values[r]!r} is not in {source}"
            )
        return codes


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return ", ".join(_text(v) for v in value)
    return str(value).strip()


def _number_problem(value: Any) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        return "missing value"
    return f"{value!r} is not a finite number"


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _check_utf8(path: Path, chunk_size: int = 1 << 20) -> None:
    """Raise a DataError naming the line of the first byte that is not UTF-8."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    lines = offset = 0  # newlines and bytes before the current chunk
    with open(path, "rb") as f:
        while True:
            chunk = f.read(chunk_size)
            if offset == 0 and chunk[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
                raise DataError(f"{path}: the file is UTF-16; save it as UTF-8")
            pending = len(decoder.getstate()[0])  # bytes of a character cut by the last chunk
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as err:
                line = lines + chunk[: max(err.start - pending, 0)].count(b"\n") + 1
                raise DataError(
                    f"{path}, line {line}: not valid UTF-8 (byte 0x{err.object[err.start]:02x} at "
                    f"offset {offset - pending + err.start}); save the file as UTF-8, "
                    "e.g. iconv -f latin1 -t utf-8"
                ) from None
            if not chunk:
                return
            lines, offset = lines + chunk.count(b"\n"), offset + len(chunk)


def _header(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        if path.suffix.lower() == ".tsv":
            return next(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), [])
        return next(csv.reader(f), [])


def _has_rows(path: Path) -> bool:
    if _FORMATS[path.suffix.lower()] == "parquet":
        try:
            return pq.read_metadata(path).num_rows > 0
        except (OSError, pa.ArrowException):
            return True  # unreadable rather than empty
    if _FORMATS[path.suffix.lower()] == "json":
        return path.read_text(encoding="utf-8-sig", errors="replace").strip() not in ("", "[]")
    return bool(_record_lines(path))


def _record_lines(path: Path) -> list[int]:
    """1-based start line of each data row, as the readers count rows (blank lines skipped)."""
    suffix = path.suffix.lower()
    with open(path, newline="", encoding="utf-8-sig") as f:
        if _FORMATS.get(suffix) == "csv":
            tsv = suffix == ".tsv"
            reader = csv.reader(
                f,
                delimiter="\t" if tsv else ",",
                quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL,
            )
            starts, end = [], 0
            for record in reader:
                if record:
                    starts.append(end + 1)
                end = reader.line_num
            return starts[1:]  # the header is not a data row
        if _FORMATS.get(suffix) == "json":
            text = f.read()
            if text.lstrip().startswith("["):
                return []
            return [k + 1 for k, line in enumerate(text.splitlines()) if line.strip()]
    return []
