"""The model side of the app API: a trained network with its catalogue, which encodes texts and
changes the catalogue and the users (adding items by text, users by profile, ratings or
interactions), computes the vectors :class:`peftrec.Recommender` serves, and saves the result.

Apps use :class:`peftrec.Recommender`, which loads this lazily, the first time a text must be
encoded. Safe under concurrent use: every method holds one lock while it reads or changes the
catalogue, the user table or the caches (``add_items`` encodes its texts without it, between
checking and publishing); the first call that needs the encoded catalogue
encodes it once, whichever thread makes it. The item- and user-side methods, inherited from
:mod:`peftrec.app.items` and :mod:`peftrec.app.users`, hold the same lock, and keep the vectors
in growing tables that a write changes row by row (costs grow with what a write changes, not
with the catalogue; :meth:`ModelRecommender.serving_vectors` hands out views of them).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from peftrec.app.items import RecommenderItems
from peftrec.app.tables import Rows
from peftrec.app.users import RecommenderUsers
from peftrec.artifact import head_vectors
from peftrec.artifact.folder import Catalog
from peftrec.artifact.head_vectors import numpy32
from peftrec.artifact.save import save_artifact
from peftrec.artifact.vectors import ServingVectors
from peftrec.models.tokens import tokenize_texts
from peftrec.tasks.preference.batches import history_records, item_titles, record_texts

logger = logging.getLogger(__name__)


class ModelRecommender(RecommenderItems, RecommenderUsers):
    """A trained peftrec model plus its catalogue, with item and user vectors cached.

    Items are scored from their text (and, for items the model was trained on, their ID
    embedding); :meth:`add_items` adds items by text alone. Users are trained rows, or added with
    :meth:`add_users` (a profile text), :meth:`fold_in` (a few ratings) or
    :meth:`add_interactions` (items they interacted with). :meth:`serving_vectors` gives what
    scores them all; :meth:`save_pretrained` writes it all back as a model folder.
    """

    def __init__(
        self,
        model,
        tokenizer,
        catalog: Catalog,
        meta: dict | None = None,
        device: str = "cpu",
        batch_size: int = 256,
    ):
        self.model = model.to(device).eval()
        catalog = as_torch(catalog)
        self.spec = model.spec
        self.tokenizer = tokenizer
        self.meta = meta or {"spec": model.spec}
        self.device = device
        self.batch_size = batch_size
        self.traits = model.head.traits
        """What a user of this model is and what its scores are (:mod:`peftrec.models.traits`)."""
        self.user_ids = list(catalog.user_ids)
        self.item_ids = list(catalog.item_ids)
        self.item_texts = list(catalog.item_texts)
        self.user_texts = list(catalog.user_texts) if catalog.user_texts is not None else None
        self.item_fields = {k: list(v) for k, v in (catalog.item_fields or {}).items()}
        self.rating_scale = tuple(catalog.rating_scale) if catalog.rating_scale else None
        self.domain = catalog.domain  # kept through saves: warm starts read it
        self.num_trained_items = self.spec.head["num_items"]
        # no user table when a user is their history
        self.num_trained_users = self.spec.head.get("num_users", 0) if self.traits.user_table else 0
        self.user_index = {u: i for i, u in enumerate(self.user_ids)}
        self.item_index = {it: i for i, it in enumerate(self.item_ids)}
        self._lock = threading.RLock()
        # one language-model pass at a time: a profile encode switches the adapters off for its
        # pass, and item encodes run outside ``_lock``; taken after ``_lock`` or alone, never
        # before it
        self._network_lock = threading.RLock()
        self._init_items(catalog)
        self._init_users(catalog)

    # -- what the app API serves ----------------------------------------------------------
    def serving_vectors(self) -> ServingVectors:
        """Every item's and user's vector and bias, as numpy, with the head's offset and link
        (views of the cached tables: no copy; later writes change them in place)."""
        with self._lock:
            items, users = self._item_table(), self._user_rows()
            arrays = tuple(t.array for t in (*items, *users))
            return head_vectors.serving_vectors(self.model.head, arrays[:2], arrays[2:])

    def set_serving_vectors(self, vectors: ServingVectors) -> None:
        """Reuse the vectors saved with the model (they are what this network computes for its
        catalogue and users), so they are not computed again."""
        with self._lock:
            items, users = len(vectors.item_vectors), len(vectors.user_vectors)
            if (items, users) != (len(self.item_ids), len(self.user_ids)):
                raise ValueError(
                    f"saved vectors for {items} items and {users} users; the catalogue has "
                    f"{len(self.item_ids)} and {len(self.user_ids)}"
                )
            self._item_cache = (Rows(vectors.item_vectors), Rows(vectors.item_biases))
            self._user_cache = (Rows(vectors.user_vectors), Rows(vectors.user_biases))

    def serves_exactly(self, vectors: ServingVectors) -> bool:
        """Whether the vectors reproduce the head's own scores (float32 rounding aside), on the
        first users against the whole catalogue
        (:func:`peftrec.artifact.head_vectors.serves_exactly`)."""
        with self._lock:
            items, users = self.item_vectors_of(), self._user_table()
            return head_vectors.serves_exactly(self.model.head, vectors, items, users)

    @torch.no_grad()
    def text_items(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Vectors and biases of items given only by their texts (not stored)."""
        with self._lock:
            items = self.model.head.items(self._encode(list(texts)).to(self.device), None)
            return numpy32(items[0]), numpy32(items[1])

    @torch.no_grad()
    def history_state(self, rows: Sequence[int]) -> np.ndarray:
        """A history model's state after the given item rows (time order), ``(1, dim)``."""
        with self._lock:
            return numpy32(self.model.head.history_users(self.item_vectors_of(), [list(rows)]))

    def labelled_histories(self, user_rows: Sequence[int]) -> list[tuple[np.ndarray, np.ndarray]]:
        """A preference model: each user's known labelled history, ``(item rows, labels)``."""
        with self._lock:
            return [(self._history[u], self._labels[u]) for u in user_rows]

    @torch.no_grad()
    def preference_probabilities(
        self, items: np.ndarray, histories: Sequence[tuple[Sequence[int], Sequence[int]]]
    ) -> np.ndarray:
        """A preference model: the like probability of each item row after the aligned labelled
        history ``(item rows, labels)`` (the last ``history`` events of each are read)."""
        head = self.model.head
        with self._lock:
            if not self.traits.pairs:
                users = head.users_of_histories(self.item_vectors_of(), histories)
                item = self.item_vectors_of(torch.as_tensor(items))
                return numpy32(head.score(users, item))
            parts, shares = history_records(items, histories, head.history)
            titles = item_titles(self.item_fields, self.item_texts)
            texts = record_texts(parts, titles)
            tokens = tokenize_texts(self.tokenizer, texts, head.record_length)
            with self._network_lock:
                text = self.model.encode_texts(tokens, self.batch_size).to(self.device)
            return numpy32(torch.sigmoid(head.cross_logits(text, shares.to(self.device))))

    # -- saving ------------------------------------------------------------------------------
    def save_pretrained(self, folder: str | Path, seen_times_of=None, extra=None) -> Path:
        """Write the model with everything added since loading (items, users, interactions) as a
        model folder, atomically; :meth:`from_pretrained` of it gives the same scores.
        ``seen_times_of``: the times of the histories' items (a model weighing recency);
        ``extra(folder)`` writes what else belongs in the folder (the item index)."""
        with self._lock:
            seen_users, seen_items = self._history_pairs()
            seen_times = None if seen_times_of is None else seen_times_of(self._history)
            seen_labels = None
            if self._labels is not None:  # aligned with _history_pairs' order
                seen_labels = np.concatenate(
                    [
                        self._labels.get(u, np.zeros(len(h), dtype=np.int64))
                        for u, h in self._history.items()
                    ]
                    or [np.zeros(0, dtype=np.int64)]
                )
            catalog = Catalog(
                user_ids=list(self.user_ids),
                item_ids=list(self.item_ids),
                item_texts=list(self.item_texts),
                user_texts=self.user_texts,
                item_fields=self.item_fields or None,
                rating_scale=self.rating_scale,
                domain=self.domain,
                seen_users=seen_users,
                seen_items=seen_items,
                seen_labels=seen_labels,
                seen_times=seen_times,
                user_state=self._user_state(),
                knowledge=self._vocabulary_info,
                item_facts=torch.from_numpy(self._item_facts.array)
                if self.model.head.knowledge is not None and len(self._item_facts)
                else None,
            )
            vectors = head_vectors.exact_vectors(
                self.model.head, self.item_vectors_of(), self._user_table(), self.spec.task
            )
            return save_artifact(
                folder,
                self.model,
                self.tokenizer,
                catalog,
                card=self.meta.get("card"),
                config_yaml=self.meta.get("config_yaml", ""),
                vectors=vectors,
                item_text=None if vectors is None else self.item_text_encodings(),
                extra=extra,
            )


class HeadScores:
    """The scoring interface of :class:`~peftrec.artifact.vectors.ServingVectors`, computed by the
    head
    itself: for a head whose scores are not ``link(offset + b_u + b_i + <p_u, q_i>)``."""

    def __init__(self, engine: ModelRecommender):
        self.engine, self.head = engine, engine.model.head
        vectors, biases = engine._user_table()
        self.user_vectors, self.user_biases = numpy32(vectors), numpy32(biases)

    @torch.no_grad()
    def pairs(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        user = self.engine.user_vectors_of(torch.as_tensor(users))
        return numpy32(self.head.score(user, self.engine.item_vectors_of(torch.as_tensor(items))))

    def rows(self, users: np.ndarray) -> np.ndarray:
        return self.against(self.user_vectors[users], self.user_biases[users])

    @torch.no_grad()
    def against(self, vectors, biases, item_vectors=None, item_biases=None) -> np.ndarray:
        device = self.engine.device
        user = (torch.as_tensor(vectors).to(device), torch.as_tensor(biases).to(device))
        items = (
            self.engine.item_vectors_of()
            if item_vectors is None
            else (torch.as_tensor(item_vectors).to(device), torch.as_tensor(item_biases).to(device))
        )
        return numpy32(self.head.score_all(user, items))


def as_torch(catalog: Catalog) -> Catalog:
    """The catalogue with its arrays as torch tensors (a folder's are read as numpy)."""
    state, facts = catalog.user_state, catalog.item_facts
    return dataclasses.replace(
        catalog,
        user_state=None if state is None else {k: torch.as_tensor(v) for k, v in state.items()},
        item_facts=None if facts is None else torch.as_tensor(facts),
    )
