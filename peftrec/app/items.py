"""The item side of the :class:`~peftrec.app.engine.ModelRecommender`: the catalogue's pooled texts,
item vectors and facts, and items added or changed by text (:meth:`add_items`).

Costs grow with what a write changes, not with the catalogue: the pooled texts, the item vectors
and the added items' facts are growing tables (:class:`~peftrec.app.tables.Rows`); ``add_items``
encodes only its texts, appends the new items' rows and computes only the vectors of the items
it names (and, for a model whose users are their histories, the states of the users whose history
holds a changed item). What is served equals a full recompute up to float32 rounding (a row
computed alone may round differently from the same row computed in a batch).

Thread safety as in the rest of the recommender: each public method, and each helper that reads
or fills a table, holds the recommender's one lock (``self._lock``); ``add_items`` encodes its
texts without it, between checking and publishing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext

import numpy as np
import torch

from peftrec.app.inputs import check_id, check_text, id_mapping, rows_of, warn_about_texts
from peftrec.app.tables import Rows
from peftrec.artifact import head_vectors
from peftrec.artifact.folder import Catalog
from peftrec.artifact.head_vectors import numpy32
from peftrec.models.knowledge_tower import KnowledgeVocabulary
from peftrec.models.tokens import tokenize_texts

logger = logging.getLogger(__name__)


class RecommenderItems:
    """The item-side methods of :class:`~peftrec.app.engine.ModelRecommender`, which inherits them.

    Not usable alone: it reads the recommender's model, tokenizer, lock, catalogue lists and, for
    a model whose users are their histories, its user tables (:mod:`peftrec.app.users`).
    """

    def _init_items(self, catalog: Catalog) -> None:
        """The item caches (filled on first use) and a knowledge model's vocabulary and facts."""
        self._item_text_cache: Rows | None = None  # pooled encodings, one row per item
        self._item_cache: tuple[Rows, Rows] | None = None  # item vectors and biases
        # a knowledge model: its vocabulary (to read new items' facts) and added items' facts
        self._vocabulary_info = catalog.knowledge
        knowledge = catalog.knowledge
        self._vocabulary = (
            KnowledgeVocabulary(knowledge["groups"], knowledge["entities"]) if knowledge else None
        )
        added = len(self.item_ids) - self.num_trained_items
        facts = catalog.item_facts if catalog.item_facts is not None else self._no_facts(added)
        self._item_facts = Rows(facts.numpy(), fill=-1)  # added items' entity rows (-1: none)

    def _encode(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = tokenize_texts(self.tokenizer, texts, self.spec.max_length)
        with self._network_lock:
            return self.model.encode_texts(tokens, self.batch_size)

    def _item_text(self) -> torch.Tensor:
        """Every item's pooled encoding, ``(items, text_dim)`` on the CPU (encoded once)."""
        with self._lock:
            if self._item_text_cache is None:
                self._item_text_cache = Rows(self._encode(self.item_texts).numpy())
            return torch.from_numpy(self._item_text_cache.array)

    @torch.no_grad()
    def _item_table(self) -> tuple[Rows, Rows]:
        """Every item's vector and bias (computed once, then changed row by row by writes)."""
        with self._lock:
            if self._item_cache is None:
                text = self._item_text()
                vectors, biases = self._compute_items(torch.arange(len(text)))
                self._item_cache = (Rows(numpy32(vectors)), Rows(numpy32(biases)))
            return self._item_cache

    def _compute_items(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return head_vectors.item_vectors(
            self.model.head,
            self._item_text(),
            rows,
            self.num_trained_items,
            self.facts_of(rows),
            self.device,
        )

    def add_items(
        self,
        items: Mapping[str, str],
        fields: Mapping[str, Mapping[str, str]] | None = None,
        knowledge: Mapping[str, Sequence[tuple[str, str]]] | None = None,
        publishing: AbstractContextManager | None = None,
    ) -> None:
        """The network side of :meth:`peftrec.Recommender.add_items`: all checked first, the texts
        encoded without holding the lock, then published in one step, inside ``publishing``
        (the caller's part of publishing, entered under the lock)."""
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
            self._item_text()
        encoded = self._encode(list(items.values())).numpy()  # reads do not wait for the LM
        with self._lock, publishing or nullcontext():  # publish: nothing below raises
            rows, known = [], len(self.item_ids)
            for item_id, text in items.items():
                if item_id not in self.item_index:
                    self.item_index[item_id] = len(self.item_ids)
                    self.item_ids.append(item_id)
                    self.item_texts.append(text)
                    for values in self.item_fields.values():
                        values.append("")
                else:
                    self.item_texts[self.item_index[item_id]] = text
                rows.append(self.item_index[item_id])
            for item_id, values in fields.items():
                row = self.item_index[item_id]
                for name, value in values.items():
                    self.item_fields.setdefault(name, [""] * len(self.item_ids))[row] = str(value)
            self._item_facts.resize(len(self.item_ids) - self.num_trained_items)
            for item_id, facts in fact_rows.items():
                rows.append(self.item_index[item_id])
                self._item_facts.put([rows[-1] - self.num_trained_items], facts.numpy())
            self._item_text()  # another write may have grown it meanwhile
            self._item_text_cache.put(rows[: len(items)], encoded)
            self._items_changed(np.unique(rows), known)
        logger.info("encoded %d item texts; catalogue has %d items", len(items), len(self.item_ids))

    def _check_named(self, item_id: str, items: Mapping[str, str], what: str) -> None:
        if item_id not in items and item_id not in self.item_index:
            raise KeyError(
                f"add_items: {what} names item {item_id!r}, which is neither among the items "
                "added nor in the catalogue"
            )

    @torch.no_grad()
    def _items_changed(self, rows: np.ndarray, known: int) -> None:
        """Recompute the vectors of the item ``rows`` (new or changed) and, for a model whose
        users are their histories, the users whose history holds one of the ``known`` rows (those
        that were in the catalogue before)."""
        if self._item_cache is not None:  # not computed yet: computed whole when first needed
            vectors, biases = self._compute_items(torch.as_tensor(rows))
            self._item_cache[0].put(rows, numpy32(vectors))
            self._item_cache[1].put(rows, numpy32(biases))
        if not self.traits.user_table and self._user_cache is not None:
            self._refresh_users(self._users_holding(rows[rows < known]))

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

    def item_vectors_of(
        self, rows: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The vectors and biases of the item ``rows`` (default: every item), on the device."""
        with self._lock:
            tables = self._item_table()
            if rows is None:
                arrays = [t.array for t in tables]
            else:
                index = torch.as_tensor(rows).cpu().numpy()
                arrays = [t.array[index] for t in tables]
            return tuple(torch.from_numpy(a).to(self.device) for a in arrays)

    def facts_of(self, rows: torch.Tensor) -> torch.Tensor | None:
        """A knowledge model's entity rows of these items (trained items' facts, then added
        ones'), on the device; None without a knowledge tower."""
        tower = self.model.head.knowledge
        if tower is None:
            return None
        rows = torch.as_tensor(rows).cpu()
        trained = rows < self.num_trained_items
        facts = torch.full((len(rows), *tower.facts.shape[1:]), -1, dtype=torch.long)
        facts[trained] = tower.facts.cpu()[rows[trained]]
        added = (rows[~trained] - self.num_trained_items).numpy()
        facts[~trained] = torch.from_numpy(self._item_facts.array[added])
        return facts.to(self.device)

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
            self._item_text_cache = Rows(np.asarray(encodings, dtype=np.float32))
