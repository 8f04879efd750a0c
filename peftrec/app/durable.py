"""The durable side of the :class:`~peftrec.app.recommender.Recommender`: every write kept in a
served state (:mod:`peftrec.app.state`) before it returns, replayed on load, shared with other
processes serving the same state, and carried over to an update of the model.

Not usable alone: :class:`~peftrec.app.recommender.Recommender` inherits it, and gives it
``_apply`` (a write applied to the model) and ``_items_written``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from peftrec.app.state import ServedState, StateError, jsonable
from peftrec.artifact.vectors import CUT_FILE

logger = logging.getLogger("peftrec.app.recommender")  # the app API logs under one name


class DurableWrites:
    """Writes kept in a served state (see the module)."""

    def attach_state(self, state: str | Path, shared: bool = False) -> int:
        """Keep every write from now on in ``state`` (an SQLite file, or any SQLAlchemy URL), and
        first replay the writes it holds (:mod:`peftrec.app.state`); returns how many.

        A write returns only once it is committed there, so a model loaded again with the same
        state serves every write that returned, also after a crash. With ``shared``, other
        processes serve the same state: each write first applies theirs (in the log's order,
        under the database's write lock), and :meth:`sync` applies what they wrote since."""
        if self._digest is None:
            raise ValueError("attach_state needs a model loaded with from_pretrained (a folder)")
        with self._lock:
            if self._state is not None:
                raise ValueError(f"this model already keeps its writes in {self._state.url}")
            log = ServedState(state, self._digest)
            replayed = self._replay(log, log.events())
            if replayed:
                logger.info("replayed %d writes from %s", replayed, log.url)
            self._state, self._shared = log, shared
            return replayed

    def sync(self) -> int:
        """A model serving a shared state (``attach_state(shared=True)``): apply the writes
        other processes committed since this one last looked; returns how many (0 unshared)."""
        if self._state is None or not self._shared:
            return 0
        pending = list(self._state.events(self._applied))
        if not pending:
            return 0
        with self._lock:  # another thread may have applied some meanwhile: _replay skips them
            return self._replay(self._state, pending)

    def _replay(self, log: ServedState, events) -> int:
        """Apply logged ``(seq, kind, payload)`` events after the last one applied, in order."""
        replayed, items = 0, set()
        for seq, kind, payload in events:
            if seq <= self._applied:
                continue
            try:
                self._apply(kind, payload)
            except (KeyError, ValueError, TypeError) as err:
                raise StateError(
                    f"state {log.url}: write {seq} ({kind}) no longer applies: {err}"
                ) from None
            if kind == "items":
                items.update(payload["items"])
            self._applied, replayed = seq, replayed + 1
        if replayed:
            self._changed()
            self._items_written(self.item_rows(sorted(items), "state"))
        return replayed

    def carry_over(self) -> int:
        """A model written by ``peftrec update --state``: apply, and keep in this model's state,
        the writes its parent's service recorded after the update read that log (the folder's
        ``served_cut.json``); returns how many. Each is carried once (the state remembers the
        last), so calling it again, or at every start, carries only newer ones; a model not
        updated from a state carries nothing."""
        cut_file = None if self._folder is None else self._folder / CUT_FILE
        if cut_file is None or not cut_file.is_file():
            return 0
        if self._state is None:
            raise ValueError("carry_over keeps what it carries: attach_state first")
        cut = json.loads(cut_file.read_text(encoding="utf-8"))
        key = f"carried {cut['state']}"
        done = int(self._state.info(key) or cut["seq"])
        parent = ServedState(cut["state"], cut["parent"])
        carried = 0
        try:
            for seq, kind, payload in parent.events(done):
                self._write(kind, carried=(key, str(seq)), **payload)
                carried += 1
        finally:
            parent.close()
        if carried:
            logger.info("carried %d writes over from %s", carried, cut["state"])
        return carried

    def retire(self, successor: str) -> None:
        """Refuse every later write (a :class:`StateError`, a 503 over HTTP, naming
        ``successor``): a service swapped to another model, which took this one's writes."""
        with self._lock:
            self._retired = successor

    @property
    def state_url(self) -> str | None:
        """Where writes are kept (:meth:`attach_state`); None: in memory only."""
        return None if self._state is None else self._state.url

    @contextmanager
    def _publishing(
        self, kind: str, payload: dict[str, Any], carried: tuple[str, str] | None = None
    ) -> Iterator[None]:
        """Entered under the lock, around the moment a write changes what reads see: with a
        shared state, the database's write lock is taken and the others' writes applied first;
        on leaving, the new vectors are published and the write committed (an exception inside
        rolls the transaction back). ``carried``: a ``(key, value)`` committed with it."""
        if self._retired is not None:
            raise StateError(
                f"this service now serves {self._retired}; the write was not kept: send it again"
            )
        with ExitStack() as stack:
            writing = None
            if self._state is not None and (self._shared or carried is not None):
                writing = stack.enter_context(self._state.writing())
                self._replay(self._state, writing.events(self._applied))
            yield
            self._changed()
            if kind == "items":
                self._items_written(self.item_rows(list(payload["items"]), "add_items"))
            if self._state is not None:
                self._applied = self._state.append(kind, jsonable(payload), writing)
                if carried is not None:
                    writing.set_info(*carried)

    def _write(self, kind: str, carried: tuple[str, str] | None = None, **payload: Any) -> None:
        """Apply a write and, with a state attached, commit it there before returning; the new
        vectors and the commit are published together, under the lock reads take."""
        self.engine  # noqa: B018 (loaded first, without the lock reads take)
        publishing = self._publishing(kind, payload, carried)
        if kind in ("items", "users"):  # the engine holds the lock only to check and publish
            self._apply(kind, payload, publishing)
            return
        with self._lock, publishing:
            self._apply(kind, payload)
