"""The model side of the app API: a trained network with its catalogue, which encodes texts and
changes the catalogue and the users (adding items by text, users by profile, ratings or
interactions), computes the vectors :class:`peftrec.Recommender` serves, and saves the result.

Apps use :class:`peftrec.Recommender`, which loads this lazily, the first time a text must be
encoded. Safe under concurrent use: every method holds one lock while it reads or changes the
catalogue, the user table or the caches (``add_items`` encodes its texts without it, between
checking and publishing); the first call that needs the encoded catalogue
encodes it once, whichever thread makes it. The user-side methods, inherited from
:mod:`peftrec.app.users`, hold the same lock.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from peftrec.app.inputs import check_id, check_text, id_mapping, rows_of, warn_about_texts
from peftrec.app.users import RecommenderUsers
from peftrec.artifact import head_vectors
from peftrec.artifact.folder import Catalog
from peftrec.artifact.head_vectors import numpy32
from peftrec.artifact.save import save_artifact
from peftrec.artifact.vectors import ServingVectors
from peftrec.models.knowledge_tower import KnowledgeVocabulary
from peftrec.models.tokens import tokenize_texts
from peftrec.tasks.preference.batches import history_records, item_titles, record_texts

logger = logging.getLogger(__name__)


class ModelRecommender(RecommenderUsers):
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
        self._item_text_cache: torch.Tensor | None = None  # pooled encodings, one row per item
        self._init_users(catalog)
        # a knowledge model: its vocabulary (to read new items' facts) and added items' facts
        self._vocabulary_info = catalog.knowledge
        knowledge = catalog.knowledge
        self._vocabulary = (
            KnowledgeVocabulary(knowledge["groups"], knowledge["entities"]) if knowledge else None
        )
        added = len(self.item_ids) - self.num_trained_items
        self._item_facts = (
            catalog.item_facts if catalog.item_facts is not None else self._no_facts(added)
        )

    # -- catalogue ---------------------------------------------------------------------------
    def _encode(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = tokenize_texts(self.tokenizer, texts, self.spec.max_length)
        return self.model.encode_texts(tokens, self.batch_size)

    def _item_text(self) -> torch.Tensor:
        with self._lock:
            if self._item_text_cache is None:
                self._item_text_cache = self._encode(self.item_texts)
            return self._item_text_cache

    def add_items(
        self,
        items: Mapping[str, str],
        fields: Mapping[str, Mapping[str, str]] | None = None,
        knowledge: Mapping[str, Sequence[tuple[str, str]]] | None = None,
        then: Callable[[], None] | None = None,
    ) -> None:
        """The network side of :meth:`peftrec.Recommender.add_items`: all checked first, the texts
        encoded without holding the lock, then published in one step (with ``then``)."""
        items = id_mapping(
            items, "add_items", "item", "text", "{'9001': 'Arrival (2016). Genres: Sci-Fi.'}"
        )
        for item_id, text in items.items():
            check_text(text, "add_items", f"item {item_id!r}")
        warn_about_texts(
            self.tokenizer, list(items.values()), list(items), self.spec.max_length, "add_items"
        )
        fields = {check_id(i, "add_items", "item"): v for i, v in (fields or {}).items()}
        knowledge = {check_id(i, "add_items", "item"): f for i, f in (knowledge or {}).items()}
        with self._lock:  # everything is checked before anything changes
            for item_id, values in fields.items():
                self._check_named(item_id, items, "fields")
                if not isinstance(values, Mapping):
                    raise TypeError(
                        f"add_items: the fields of item {item_id!r} are a mapping "
                        "{name: value}, e.g. {'title': 'Arrival'}"
                    )
            fact_rows = {}
            for item_id, facts in knowledge.items():
                self._check_named(item_id, items, "knowledge")
                row = self.item_index.get(item_id)
                if row is not None and row < self.num_trained_items:
                    raise ValueError(
                        f"add_items: item {item_id!r} was trained with its facts, which cannot "
                        "be replaced"
                    )
                fact_rows[item_id] = self._fact_rows(facts, item_id)
            cache = self._item_text()
        encoded = self._encode(list(items.values()))  # reads do not wait for the LM
        with self._lock:  # publish: nothing below raises
            rows = []
            for item_id, text in items.items():
                if item_id not in self.item_index:
                    self.item_index[item_id] = len(self.item_ids)
                    self.item_ids.append(item_id)
                    self.item_texts.append(text)
                    self._item_facts = torch.cat([self._item_facts, self._no_facts(1)])
                    for values in self.item_fields.values():
                        values.append("")
                else:
                    self.item_texts[self.item_index[item_id]] = text
                rows.append(self.item_index[item_id])
            for item_id, values in fields.items():
                row = self.item_index[item_id]
                for name, value in values.items():
                    self.item_fields.setdefault(name, [""] * len(self.item_ids))[row] = str(value)
            for item_id, facts in fact_rows.items():
                self._item_facts[self.item_index[item_id] - self.num_trained_items] = facts
            cache = self._item_text()  # another write may have grown it meanwhile
            grown = torch.zeros(len(self.item_ids), cache.shape[1])
            grown[: len(cache)] = cache
            grown[rows] = encoded
            self._item_text_cache = grown
            if self.traits.history:  # a changed text moves the states of histories holding it
                self._user_cache = None
            if then is not None:  # the caller's part of publishing, under the same lock
                then()
        logger.info("encoded %d item texts; catalogue has %d items", len(items), len(self.item_ids))

    def _check_named(self, item_id: str, items: Mapping[str, str], what: str) -> None:
        if item_id not in items and item_id not in self.item_index:
            raise KeyError(
                f"add_items: {what} names item {item_id!r}, which is neither among the items "
                "added nor in the catalogue"
            )

    def _no_facts(self, count: int) -> torch.Tensor:
        tower = self.model.head.knowledge
        shape = tower.facts.shape[1:] if tower is not None else (0, 0)
        return torch.full((count, *shape), -1, dtype=torch.long)

    def _fact_rows(self, facts, item_id: str) -> torch.Tensor:
        if self.model.head.knowledge is None or self._vocabulary is None:
            raise ValueError(
                "add_items: this model has no knowledge tower (model.knowledge), so it cannot "
                "use facts"
            )
        if isinstance(facts, (str, Mapping)) or not all(
            isinstance(f, (tuple, list)) and len(f) == 2 for f in facts
        ):
            raise TypeError(
                f"add_items: the facts of item {item_id!r} are a list of (relation, entity) pairs"
            )
        info = self._vocabulary_info
        group_map = info["group_map"]
        known = set(group_map) if group_map else set(self._vocabulary.groups)
        unknown = sorted({str(r) for r, _ in facts} - known)
        if unknown:  # a misspelt relation would be dropped without a word
            raise ValueError(
                f"add_items: item {item_id!r}: relation {unknown[0]!r} is not one this model "
                f"was trained with ({len(known)} relations, e.g. {', '.join(sorted(known)[:3])})"
            )
        return self._vocabulary.rows(
            [(str(r), str(e)) for r, e in facts], info["relations"], group_map
        )

    def item_rows(self, item_ids: Sequence[str], where: str = "predict") -> torch.Tensor:
        ids = [check_id(i, where, "item") for i in item_ids]
        with self._lock:
            return torch.as_tensor(rows_of(ids, self.item_index, where, "item"), dtype=torch.long)

    @torch.no_grad()
    def item_vectors_of(self, rows: torch.Tensor | None = None):
        text = self._item_text()
        rows = torch.arange(len(text)) if rows is None else rows
        return head_vectors.item_vectors(
            self.model.head, text, rows, self.num_trained_items, self.facts_of(rows), self.device
        )

    def facts_of(self, rows: torch.Tensor) -> torch.Tensor | None:
        """A knowledge model's entity rows of these items (trained items' facts, then added
        ones'), on the device; None without a knowledge tower."""
        if self.model.head.knowledge is None:
            return None
        facts = torch.cat([self.model.head.knowledge.facts.cpu(), self._item_facts])[rows]
        return facts.to(self.device)

    # -- what the app API serves ----------------------------------------------------------
    def serving_vectors(self) -> ServingVectors:
        """Every item's and user's vector and bias, as numpy, with the head's offset and link."""
        with self._lock:
            head = self.model.head
            return head_vectors.serving_vectors(head, self.item_vectors_of(), self._user_table())

    def serves_exactly(self, vectors: ServingVectors) -> bool:
        """Whether the vectors reproduce the head's own scores (float32 rounding aside), on the
        first users against the whole catalogue
        (:func:`peftrec.artifact.head_vectors.serves_exactly`)."""
        with self._lock:
            items, users = self.item_vectors_of(), self._user_table()
            return head_vectors.serves_exactly(self.model.head, vectors, items, users)

    def item_text_encodings(self) -> np.ndarray:
        """The pooled text encoding of every catalogue item (encoded once, then cached)."""
        return numpy32(self._item_text())

    def set_item_text_encodings(self, encodings: np.ndarray) -> None:
        """Reuse encodings saved with the model, so the catalogue is not encoded again."""
        with self._lock:
            if len(encodings) != len(self.item_ids):
                raise ValueError(
                    f"{len(encodings)} saved text encodings for {len(self.item_ids)} items"
                )
            self._item_text_cache = torch.from_numpy(np.array(encodings)).to(self.device)

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
            text = self.model.encode_texts(tokens, self.batch_size).to(self.device)
            return numpy32(torch.sigmoid(head.cross_logits(text, shares.to(self.device))))

    # -- saving ------------------------------------------------------------------------------
    def save_pretrained(self, folder: str | Path) -> Path:
        """Write the model with everything added since loading (items, users, interactions) as a
        model folder, atomically; :meth:`from_pretrained` of it gives the same scores."""
        with self._lock:
            seen_users, seen_items = self._history_pairs()
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
                user_state=self._user_state(),
                knowledge=self._vocabulary_info,
                item_facts=self._item_facts
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
