"""Durable served state: the writes an app acknowledged, committed to a database first.

A served model folder never changes; what apps add to it (items, users, interactions, ratings)
is an append-only log of events in a SQL database, one row per acknowledged write, replayed in
order when the model is loaded again. The default is an SQLite file beside the model folder;
any SQLAlchemy URL works (``postgresql://...`` for a database on another host).

A log belongs to one model: it records the model folder's digest and refuses to replay onto
another one (an updated model starts a new log, or replays this one explicitly).

Several processes may serve one log (``peftrec serve --workers N``, or hosts sharing a
PostgreSQL database): a write takes the database's write lock (:meth:`ServedState.writing`),
applies the events the others committed before it, then its own, and commits, so every process
applies the same events in the same order; reads first apply what the others wrote since.
"""

from __future__ import annotations

import json
import operator
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

EVENTS = ("items", "users", "interactions", "ratings")
"""The kinds of write an app records, named after the endpoint that takes them."""


class StateError(RuntimeError):
    """The served state cannot be read or written (a database error, or another model's log)."""


def jsonable(value: Any) -> Any:
    """A write's arguments as JSON: ids (mapping keys) as the strings the model stores them as,
    numpy numbers as Python ones, tuples as lists."""
    if isinstance(value, Mapping):
        return {_key(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # a numpy scalar
        return value.item()
    return value


def _key(key: Any) -> str:
    return key if isinstance(key, str) else str(operator.index(key))


def state_url(state: str | Path) -> str:
    """An SQLAlchemy URL: given as one (``sqlite:///...``, ``postgresql://...``) or a file path
    (an SQLite database, created when missing)."""
    text = str(state)
    if "://" in text:
        return text
    path = Path(text).expanduser().absolute()
    if path.is_dir():
        raise StateError(f"state {text!r} is a folder; name a database file, e.g. {path}/state.db")
    return f"sqlite:///{path}"


def default_state(folder: Path) -> Path:
    """Where ``peftrec serve`` keeps a model's state unless told: beside the model folder."""
    folder = Path(folder).absolute()
    return folder.with_name(folder.name + ".state.sqlite")


class ServedState:
    """The event log of one served model (see the module)."""

    def __init__(self, state: str | Path, model_digest: str):
        try:
            import sqlalchemy as sa
        except ImportError:
            raise StateError(
                "keeping served writes needs SQLAlchemy: pip install 'peftrec[serve]'"
            ) from None

        self.url = state_url(state)
        sqlite = self.url.startswith("sqlite")
        try:
            self._engine = sa.create_engine(
                self.url, connect_args={"timeout": 30} if sqlite else {}
            )
        except (sa.exc.ArgumentError, ModuleNotFoundError) as err:
            raise StateError(f"state {state!r}: {err}") from None
        if sqlite:  # every acknowledged write is on disk before the call returns
            sa.event.listen(self._engine, "connect", _durable_sqlite)
        meta = sa.MetaData()
        self._events = sa.Table(
            "peftrec_events",
            meta,
            sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("at", sa.Float, nullable=False),
            sa.Column("kind", sa.String(32), nullable=False),
            sa.Column("payload", sa.Text, nullable=False),
        )
        self._info = sa.Table(
            "peftrec_state",
            meta,
            sa.Column("key", sa.String(64), primary_key=True),
            sa.Column("value", sa.Text, nullable=False),
        )
        self._sa = sa
        try:
            meta.create_all(self._engine)
            with self._engine.begin() as db:
                row = db.execute(
                    sa.select(self._info.c.value).where(self._info.c.key == "model")
                ).first()
                if row is None:
                    db.execute(sa.insert(self._info).values(key="model", value=model_digest))
        except sa.exc.SQLAlchemyError as err:
            raise StateError(f"state {self.url}: {err.__class__.__name__}: {err}") from None
        if row is not None and row.value != model_digest:
            raise StateError(
                f"state {self.url} holds the writes to another model (digest {row.value[:12]}, "
                f"this one {model_digest[:12]}); name a new state for this model"
            )

    def events(self, after: int = 0, timed: bool = False) -> Iterator[tuple]:
        """``(seq, kind, payload)`` of every recorded write after sequence number ``after``, in
        the order they were made; ``timed``: ``(seq, kind, payload, at)``, ``at`` when it was
        committed (seconds since the epoch)."""
        sa = self._sa
        try:
            with self._engine.connect() as db:
                rows = self._after(db, after, timed)
        except sa.exc.SQLAlchemyError as err:
            raise StateError(f"state {self.url}: {err.__class__.__name__}: {err}") from None
        yield from rows

    def _after(self, db, after: int, timed: bool = False) -> list[tuple]:
        events = self._events
        query = self._sa.select(events).where(events.c.seq > after).order_by(events.c.seq)
        return [
            (row.seq, row.kind, json.loads(row.payload), *((row.at,) if timed else ()))
            for row in db.execute(query)
        ]

    def append(self, kind: str, payload: dict[str, Any], writing: Writing | None = None) -> int:
        """Commit one write; returns its sequence number. Raises :class:`StateError` when the
        database does not take it (the write is then not acknowledged). Inside
        :meth:`writing`, pass its handle: the row joins that transaction."""
        if kind not in EVENTS:
            raise ValueError(f"unknown event kind {kind!r}; one of {EVENTS}")
        sa = self._sa
        row = {"at": time.time(), "kind": kind, "payload": json.dumps(payload)}
        insert = sa.insert(self._events).values(**row)
        try:
            if writing is not None:
                return int(writing.db.execute(insert).inserted_primary_key[0])
            with self._engine.begin() as db:
                return int(db.execute(insert).inserted_primary_key[0])
        except sa.exc.SQLAlchemyError as err:
            raise StateError(f"state {self.url}: {err.__class__.__name__}: {err}") from None

    @contextmanager
    def writing(self) -> Iterator[Writing]:
        """A transaction that holds the log's write lock until it commits (on leaving the block;
        an exception rolls it back): no other process appends meanwhile, so the events it reads
        (:meth:`Writing.events`) and the one it appends keep their order everywhere."""
        sa = self._sa
        try:
            with self._engine.connect() as db:
                if self.url.startswith("sqlite"):  # the database's write lock, taken now
                    db = db.execution_options(isolation_level="AUTOCOMMIT")
                    db.exec_driver_sql("BEGIN IMMEDIATE")
                    try:
                        yield Writing(self, db)
                    except BaseException:
                        db.exec_driver_sql("ROLLBACK")
                        raise
                    db.exec_driver_sql("COMMIT")
                    return
                with db.begin():  # a row lock every writer takes first (PostgreSQL, MySQL ...)
                    info = self._info
                    db.execute(sa.select(info).where(info.c.key == "model").with_for_update())
                    yield Writing(self, db)
        except sa.exc.SQLAlchemyError as err:
            raise StateError(f"state {self.url}: {err.__class__.__name__}: {err}") from None

    def info(self, key: str) -> str | None:
        """A value the state keeps beside its events (None: not set)."""
        sa, table = self._sa, self._info
        try:
            with self._engine.connect() as db:
                row = db.execute(sa.select(table.c.value).where(table.c.key == key)).first()
        except sa.exc.SQLAlchemyError as err:
            raise StateError(f"state {self.url}: {err.__class__.__name__}: {err}") from None
        return None if row is None else row.value

    def __len__(self) -> int:
        sa = self._sa
        with self._engine.connect() as db:
            return int(db.execute(sa.select(sa.func.count()).select_from(self._events)).scalar())

    def close(self) -> None:
        self._engine.dispose()


class Writing:
    """An open :meth:`ServedState.writing` transaction."""

    def __init__(self, state: ServedState, db):
        self.state, self.db = state, db

    def events(self, after: int) -> list[tuple[int, str, dict[str, Any]]]:
        """The events committed after ``after``, read inside the transaction."""
        return self.state._after(self.db, after)

    def set_info(self, key: str, value: str) -> None:
        """Keep ``value`` under ``key`` beside the events, committed with them."""
        sa, table = self.state._sa, self.state._info
        self.db.execute(sa.delete(table).where(table.c.key == key))
        self.db.execute(sa.insert(table).values(key=key, value=value))


def _durable_sqlite(connection, _record) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()
