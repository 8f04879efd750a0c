"""The app API: load a trained model, score and recommend, add items by text and users by profile,
ratings or interactions, and save the result.

Safe under concurrent use: every method holds one lock while it reads or changes the catalogue,
the user table or the caches, so threads may call ``recommend`` while others ``add_items``; the
first call that needs the encoded catalogue encodes it once, whichever thread makes it. The
user-side methods, inherited from :mod:`peftrec.recommender_users`, hold the same lock.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from .artifact import Catalog, load_artifact, save_artifact
from .heads import RatingHead
from .inputs import check_id, check_k, check_text, id_list, id_mapping, warn_about_texts
from .knowledge import KnowledgeVocabulary
from .recommender_users import RecommenderUsers
from .sequential import SequentialHead, history_states
from .tokens import tokenize_texts

logger = logging.getLogger(__name__)


class Recommender(RecommenderUsers):
    """A trained peftrec model plus its catalogue, with item and user vectors cached for serving.

    Items are scored from their text (and, for items the model was trained on, their ID
    embedding); :meth:`add_items` adds items by text alone. Users are trained rows, or added with
    :meth:`add_users` (a profile text), :meth:`fold_in` (a few ratings) or
    :meth:`add_interactions` (items they interacted with). Rating models predict ratings, clipped
    to the scale of the training ratings; ranking models predict scores, comparable only within
    one user. :meth:`save_pretrained` writes it all back as a model folder.
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
        self.spec = model.spec
        self.tokenizer = tokenizer
        self.meta = meta or {"spec": model.spec}
        self.device = device
        self.batch_size = batch_size
        self.is_rating = isinstance(model.head, RatingHead)
        self.user_ids = list(catalog.user_ids)
        self.item_ids = list(catalog.item_ids)
        self.item_texts = list(catalog.item_texts)
        self.user_texts = list(catalog.user_texts) if catalog.user_texts is not None else None
        self.item_fields = {k: list(v) for k, v in (catalog.item_fields or {}).items()}
        self.rating_scale = tuple(catalog.rating_scale) if catalog.rating_scale else None
        self.num_trained_items = self.spec.head["num_items"]
        self.num_trained_users = self.spec.head.get("num_users", 0)
        self._user_index = {u: i for i, u in enumerate(self.user_ids)}
        self._item_index = {it: i for i, it in enumerate(self.item_ids)}
        self.is_sequential = isinstance(model.head, SequentialHead)
        if self.is_sequential:
            self.num_trained_users = 0  # no user table: every user is their history
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

    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        *,
        device: str = "cpu",
        backbone: str | None = None,
        trust_remote_code: bool = False,
    ) -> Recommender:
        """Load a folder written by a peftrec recipe or :meth:`save_pretrained` (safetensors and
        JSON only; every file the model needs is checked first)."""
        model, tokenizer, catalog, meta = load_artifact(
            folder, backbone=backbone, trust_remote_code=trust_remote_code
        )
        return cls(model, tokenizer, catalog, meta, device=device)

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
    ) -> None:
        """Add new items, or change the text of known ones, as ``{item_id: text}``.

        For a model with a knowledge tower, ``knowledge`` gives new items' facts as
        ``{item_id: [(relation, entity), ...]}`` (the relations of the training facts, e.g.
        ``("film.film.directed_by", "m.0bxtg")``); entities the model never learned are ignored.

        Only these texts are encoded; the rest of the cached catalogue is kept. A new item has no
        ID embedding, so it is scored from its text alone (a model trained with
        ``model.item_id_dropout`` has learned to score trained items that way too). ``fields``
        (``{item_id: {"title": ...}}``) are shown by :meth:`item_info`. Texts longer than the
        model reads, or mostly unknown to its tokenizer, get a warning.
        """
        items = id_mapping(
            items, "add_items", "item", "text", "{'9001': 'Arrival (2016). Genres: Sci-Fi.'}"
        )
        for item_id, text in items.items():
            check_text(text, "add_items", f"item {item_id!r}")
        warn_about_texts(
            self.tokenizer, list(items.values()), list(items), self.spec.max_length, "add_items"
        )
        with self._lock:
            cache = self._item_text()
            encoded = self._encode(list(items.values()))
            rows = []
            for item_id, text in items.items():
                if item_id not in self._item_index:
                    self._item_index[item_id] = len(self.item_ids)
                    self.item_ids.append(item_id)
                    self.item_texts.append(text)
                    self._item_facts = torch.cat([self._item_facts, self._no_facts(1)])
                    for values in self.item_fields.values():
                        values.append("")
                else:
                    self.item_texts[self._item_index[item_id]] = text
                rows.append(self._item_index[item_id])
            for item_id, values in (fields or {}).items():
                row = self._item_index[check_id(item_id, "add_items", "item")]
                for name, value in values.items():
                    self.item_fields.setdefault(name, [""] * len(self.item_ids))[row] = str(value)
            for item_id, facts in (knowledge or {}).items():
                row = self._item_index[check_id(item_id, "add_items", "item")]
                if row < self.num_trained_items:
                    raise ValueError(
                        f"add_items: item {item_id!r} was trained with its facts, which cannot "
                        "be replaced"
                    )
                self._item_facts[row - self.num_trained_items] = self._fact_rows(facts, item_id)
            grown = torch.zeros(len(self.item_ids), cache.shape[1])
            grown[: len(cache)] = cache
            grown[rows] = encoded
            self._item_text_cache = grown
            if self.is_sequential:  # a changed text moves the states of histories holding it
                self._user_cache = None
        logger.info("encoded %d item texts; catalogue has %d items", len(items), len(self.item_ids))

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
        return self._vocabulary.rows(
            [(str(r), str(e)) for r, e in facts], info["relations"], info["group_map"]
        )

    def item_info(self, item_id: str) -> dict[str, str]:
        """What the catalogue knows of an item: its fields (title, year, ...) and its text."""
        row = self._items([item_id], "item_info")[0].item()
        with self._lock:
            return {
                **{k: v[row] for k, v in self.item_fields.items()},
                "text": self.item_texts[row],
            }

    def _items(self, item_ids: Sequence[str], where: str = "predict") -> torch.Tensor:
        ids = [check_id(i, where, "item") for i in item_ids]
        with self._lock:
            missing = [i for i in ids if i not in self._item_index]
            if missing:
                raise KeyError(
                    f"{where}: unknown item id {missing[0]!r} ({len(missing)} unknown of "
                    f"{len(ids)}); add it first with add_items({{id: text}})"
                )
            return torch.as_tensor([self._item_index[i] for i in ids], dtype=torch.long)

    @torch.no_grad()
    def _item_vectors(self, rows: torch.Tensor | None = None):
        text = self._item_text()
        rows = torch.arange(len(text)) if rows is None else rows
        id_index = torch.where(rows < self.num_trained_items, rows, torch.full_like(rows, -1))
        facts = None
        if self.model.head.knowledge is not None:  # trained items' facts, then added ones'
            facts = torch.cat([self.model.head.knowledge.facts.cpu(), self._item_facts])[rows]
            facts = facts.to(self.device)
        return self.model.head.items(text[rows].to(self.device), id_index.to(self.device), facts)

    # -- scoring -----------------------------------------------------------------------------
    def _bounded(self, scores: torch.Tensor) -> torch.Tensor:
        """Ratings clipped to the training scale (rating models); ranking scores as they are."""
        if self.is_rating and self.rating_scale is not None:
            return scores.clamp(*self.rating_scale)
        return scores

    @torch.no_grad()
    def predict(self, user_ids: Sequence[str], item_ids: Sequence[str]) -> np.ndarray:
        """Scores of aligned pairs ``(user_ids[k], item_ids[k])``: predicted ratings, clipped to the
        training scale, for a rating model; for a ranking model, scores that order one user's items
        (higher is better) and mean nothing across users or as ratings."""
        users, items = id_list(user_ids, "predict", "user"), id_list(item_ids, "predict", "item")
        if len(users) != len(items):
            raise ValueError(
                f"predict: {len(users)} users but {len(items)} items; pass aligned lists"
            )
        if not users:
            return np.zeros(0, dtype=np.float32)
        with self._lock:
            scores = self.model.head.score(
                self._user_vectors(self._users(users)), self._item_vectors(self._items(items))
            )
            return self._bounded(scores).cpu().numpy()

    @torch.no_grad()
    def predict_texts(self, user_id: str, texts: Sequence[str]) -> np.ndarray:
        """Scores (as :meth:`predict`) of one user for items given only by their texts
        (not stored)."""
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise TypeError(
                "predict_texts: pass a list of texts, e.g. predict_texts('196', ['a comedy'])"
            )
        if len(texts) == 0:
            return np.zeros(0, dtype=np.float32)
        for k, text in enumerate(texts):
            check_text(text, "predict_texts", f"text {k}")
        with self._lock:
            user = self._user_vectors(self._users([user_id], "predict_texts"))
            items = self.model.head.items(self._encode(list(texts)).to(self.device), None)
            return self._bounded(self.model.head.score_all(user, items)[0]).cpu().numpy()

    @torch.no_grad()
    def _raw_scores(self, rows: torch.Tensor) -> torch.Tensor:
        return self.model.head.score_all(self._user_vectors(rows), self._item_vectors()).cpu()

    def score_all(self, user_ids: Sequence[str] | None = None) -> np.ndarray:
        """Scores (as :meth:`predict`) of the given (default: all) users for every catalogue item,
        ``(users, items)``."""
        with self._lock:
            rows = (
                torch.arange(len(self.user_ids))
                if user_ids is None
                else self._users(id_list(user_ids, "score_all", "user"), "score_all")
            )
            return self._bounded(self._raw_scores(rows)).numpy()

    def recommend(
        self,
        user_id: str,
        k: int = 10,
        exclude_seen: bool = True,
        candidates: Sequence[str] | None = None,
    ) -> list[tuple[str, float]]:
        """The ``k`` highest-scored items for ``user_id`` as ``(item_id, score)``, best first.

        With ``exclude_seen`` the items the user is known to have interacted with (the training
        interactions saved with the model, and those added since) are left out. ``candidates``
        (item ids) restricts the ranking to those items, e.g. a shelf of new arrivals.
        """
        if not isinstance(user_id, (str, int, np.integer)) or isinstance(user_id, bool):
            raise TypeError(
                f"recommend: pass one user id (str or int), got {type(user_id).__name__}; "
                "for several users use recommend_batch(user_ids, k)"
            )
        return self.recommend_batch([user_id], k, exclude_seen, candidates, where="recommend")[0]

    def recommend_batch(
        self,
        user_ids: Sequence[str],
        k: int = 10,
        exclude_seen: bool = True,
        candidates: Sequence[str] | None = None,
        where: str = "recommend_batch",
    ) -> list[list[tuple[str, float]]]:
        """:meth:`recommend` for many users at once (one matrix product), in the given order."""
        k = check_k(k, where)
        users = id_list(user_ids, where, "user")
        allowed = (
            None if candidates is None else self._items(id_list(candidates, where, "item"), where)
        )
        with self._lock:
            rows = self._users(users, where)
            scores = self._raw_scores(rows).numpy().astype(np.float64)
            # only these items compete (a shelf of new arrivals, a genre ...)
            if allowed is not None:
                outside = np.ones(scores.shape[1], dtype=bool)
                outside[allowed.numpy()] = False
                scores[:, outside] = -np.inf
            if exclude_seen:
                for r, row in enumerate(rows.tolist()):
                    scores[r, self._seen[row]] = -np.inf
            shown = self._bounded(torch.as_tensor(scores)).numpy()
            results = []
            for r, user in enumerate(users):
                available = int(np.isfinite(scores[r]).sum())
                if k > available:
                    raise ValueError(
                        f"{where}: k={k} but only {available} items are left to recommend to user "
                        f"{user!r}"
                    )
                top = np.argpartition(-scores[r], k - 1)[:k]
                top = top[np.argsort(-scores[r, top], kind="stable")]
                results.append([(self.item_ids[i], float(shown[r, i])) for i in top])
            return results

    def recommend_for_history(
        self, item_ids: Sequence[str], k: int = 10, exclude_seen: bool = True
    ) -> list[tuple[str, float]]:
        """The ``k`` best next items after an anonymous session's items (time order); a history
        model only. With ``exclude_seen`` the session's items are left out."""
        if not self.is_sequential:
            raise ValueError(
                "recommend_for_history needs a history model (recipes/train_sequential.py); this "
                f"is a {self.spec.task} model, whose users are rows of a table"
            )
        rows = self._items(
            id_list(item_ids, "recommend_for_history", "item"), "recommend_for_history"
        )
        k = check_k(k, "recommend_for_history")
        with self._lock, torch.no_grad():
            items = self._item_vectors()
            state = history_states(self.model.head, items, [rows.tolist()])
            scores = self.model.head.score_states(state, items)[0].cpu().numpy().astype(np.float64)
        if exclude_seen:
            scores[rows.numpy()] = -np.inf
        if k > int(np.isfinite(scores).sum()):
            raise ValueError(
                f"recommend_for_history: k={k} but only {int(np.isfinite(scores).sum())} "
                "items are left"
            )
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(self.item_ids[i], float(scores[i])) for i in top]

    # -- saving ------------------------------------------------------------------------------
    def save_pretrained(self, folder: str | Path) -> Path:
        """Write the model with everything added since loading (items, users, interactions) as a
        model folder, atomically; :meth:`from_pretrained` of it gives the same scores."""
        with self._lock:
            seen_users, seen_items = self._history_pairs()
            catalog = Catalog(
                user_ids=list(self.user_ids),
                item_ids=list(self.item_ids),
                item_texts=list(self.item_texts),
                user_texts=self.user_texts,
                item_fields=self.item_fields or None,
                rating_scale=self.rating_scale,
                seen_users=seen_users,
                seen_items=seen_items,
                user_state=self._user_state(),
                knowledge=self._vocabulary_info,
                item_facts=self._item_facts
                if self.model.head.knowledge is not None and len(self._item_facts)
                else None,
            )
            return save_artifact(
                folder,
                self.model,
                self.tokenizer,
                catalog,
                card=self.meta.get("card"),
                config_yaml=self.meta.get("config_yaml", ""),
            )
