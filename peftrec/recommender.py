"""The app API: load a trained model, score and recommend, add items by text and users by profile,
ratings or interactions, and save the result.

Safe under concurrent use: every method holds one lock while it reads or changes the catalogue,
the user table or the caches, so threads may call ``recommend`` while others ``add_items``; the
first call that needs the encoded catalogue encodes it once, whichever thread makes it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from .artifact import Catalog, load_artifact, save_artifact
from .fold_in import ridge_fold_in, softmax_fold_in
from .heads import RatingHead
from .inputs import (
    check_id,
    check_k,
    check_rating,
    check_text,
    id_list,
    id_mapping,
    warn_about_texts,
)
from .knowledge import KnowledgeVocabulary
from .sequential import SequentialHead, history_states
from .tokens import tokenize_texts

logger = logging.getLogger(__name__)


class Recommender:
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
        # each user's known interactions in time order (a history model reads them) and as a set
        self._history = {u: np.zeros(0, dtype=np.int64) for u in range(len(self.user_ids))}
        self._history.update(self._group(catalog.seen_users, catalog.seen_items))
        self._seen = {u: np.unique(h) for u, h in self._history.items()}
        self._lock = threading.RLock()
        self._item_text_cache: torch.Tensor | None = None  # pooled encodings, one row per item
        self._user_cache: tuple[torch.Tensor, torch.Tensor] | None = (
            None  # (vectors, biases) per user
        )
        self._profiles: dict[int, torch.Tensor] = {}  # added users' profile vectors, by user row
        self._folded: dict[
            int, tuple[torch.Tensor, torch.Tensor, float]
        ] = {}  # (items, ratings, l2)
        self._interacted: dict[int, np.ndarray] = {}  # items of users added from interactions
        # a knowledge model: its vocabulary (to read new items' facts) and added items' facts
        self._vocabulary_info = catalog.knowledge
        self._vocabulary = None
        if catalog.knowledge:
            self._vocabulary = KnowledgeVocabulary(
                catalog.knowledge["groups"], catalog.knowledge["entities"]
            )
        added = len(self.item_ids) - self.num_trained_items
        self._item_facts = (
            catalog.item_facts if catalog.item_facts is not None else self._no_facts(added)
        )
        if catalog.user_state:
            self._restore_users(catalog.user_state)

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

    @staticmethod
    def _group(users: np.ndarray, items: np.ndarray) -> dict[int, np.ndarray]:
        """Each user's items, in the given (time) order."""
        users, items = np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64)
        order = np.argsort(users, kind="stable")
        users, items = users[order], items[order]
        starts = np.flatnonzero(np.diff(users, prepend=-1))
        return {int(users[s]): g for s, g in zip(starts, np.split(items, starts[1:]), strict=True)}

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

    # -- lookups -----------------------------------------------------------------------------
    def _users(self, user_ids: Sequence[str], where: str = "predict") -> torch.Tensor:
        ids = [check_id(u, where, "user") for u in user_ids]
        with self._lock:
            missing = [u for u in ids if u not in self._user_index]
            if missing:
                raise KeyError(
                    f"{where}: unknown user id {missing[0]!r} ({len(missing)} unknown of "
                    f"{len(ids)}); this model knows {len(self.user_ids)} users; add one with "
                    f"add_users({{id: profile}}), fold_in(id, {{item_id: rating}}) or "
                    f"add_interactions({{id: [item_id]}})"
                )
            return torch.as_tensor([self._user_index[u] for u in ids], dtype=torch.long)

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

    # -- users -------------------------------------------------------------------------------
    @torch.no_grad()
    def _user_table(self) -> tuple[torch.Tensor, torch.Tensor]:
        with self._lock:
            if self._user_cache is None and self.is_sequential:  # the state after each history
                states = history_states(
                    self.model.head,
                    self._item_vectors(),
                    [self._history[u] for u in range(len(self.user_ids))],
                )
                self._user_cache = (states, states.new_zeros(len(states)))
            elif self._user_cache is None:
                index = torch.arange(self.num_trained_users, device=self.device)
                self._user_cache = tuple(t.clone() for t in self.model.head.users(index))
            return self._user_cache

    def _user_vectors(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        vectors, biases = self._user_table()
        rows = rows.to(self.device)
        return vectors[rows], biases[rows]

    def _put_users(
        self, user_ids: Sequence[str], vectors: torch.Tensor, biases: torch.Tensor
    ) -> list[int]:
        """Store the vectors and biases of new or changed users; their rows."""
        with self._lock:
            table = list(self._user_table())
            rows = []
            for user_id in user_ids:
                if user_id not in self._user_index:
                    self._user_index[user_id] = len(self.user_ids)
                    self.user_ids.append(user_id)
                    self._seen[self._user_index[user_id]] = np.zeros(0, dtype=np.int64)
                    self._history[self._user_index[user_id]] = np.zeros(0, dtype=np.int64)
                    if self.user_texts is not None:
                        self.user_texts.append("")
                rows.append(self._user_index[user_id])
            table = [
                torch.cat([t, t.new_zeros(len(self.user_ids) - len(t), *t.shape[1:])])
                for t in table
            ]
            table[0][rows], table[1][rows] = vectors.to(table[0]), biases.to(table[1])
            self._user_cache = (table[0], table[1])
            return rows

    @torch.no_grad()
    def _profile_vector(self, row: int) -> torch.Tensor:
        """The profile-text part of a user's vector (zero for a user without a profile)."""
        head = self.model.head
        if row in self._profiles:
            return self._profiles[row]
        if row < self.num_trained_users and head.user_text_proj is not None:
            return head.user_text_proj(head.user_text[row].to(self.device))
        return torch.zeros(head.dim, device=self.device)

    def _profile_encoding(self):
        """A context in which the backbone encodes texts as it did for the training profiles: the
        recipe encodes them once, before training, so with the backbone as it was then."""
        method = self.spec.adapter.method
        prompt_learning = method == "prefix" or (
            method == "peft" and self.model.backbone.active_peft_config.is_prompt_learning
        )
        if method in ("lora", "qlora", "frozen") or (method == "peft" and not prompt_learning):
            return (
                self.model.adapters_disabled()
            )  # LoRA, IA3, ...: the adapter starts as the identity
        raise ValueError(
            f"add_users: this model's profile encodings came from its backbone before training "
            f"(adapter {method}), which the model folder does not keep, so a new profile cannot "
            "be encoded the same way; fold_in(id, {item_id: rating}) works"
        )

    def add_users(self, users: Mapping[str, str]) -> None:
        """Add users who have no ratings yet, as ``{user_id: profile_text}``.

        Needs a model trained with ``model.user_text=true``: a new user's vector is the projection
        of the encoded profile (the user-ID part is zero) and the bias 0. The text should follow
        the training template (ml-100k: "A 24-year-old male technician."). Users added earlier
        may get a new profile (a user folded in with ratings is refit with it); the profiles of
        trained users cannot be replaced, since their vectors were learned with their own.
        """
        head = self.model.head
        if head.user_text_proj is None:
            raise ValueError(
                "add_users: this model was trained without model.user_text=true, so it has no "
                "tower that turns a profile text into a user vector; fold_in(id, {item_id: "
                "rating}) or add_interactions({id: [item_id, ...]}) adds a user instead"
            )
        users = id_mapping(
            users, "add_users", "user", "profile text", "{'new1': 'A 24-year-old female student.'}"
        )
        for user_id, text in users.items():
            check_text(text, "add_users", f"user {user_id!r}")
            row = self._user_index.get(user_id)
            if row is not None and row < self.num_trained_users:
                raise ValueError(
                    f"add_users: user '{user_id}' was trained with its own profile, which cannot "
                    "be replaced; fold_in(id, {item_id: rating}) updates a user from ratings"
                )
        warn_about_texts(
            self.tokenizer, list(users.values()), list(users), self.spec.max_length, "add_users"
        )
        with self._lock:
            with self._profile_encoding(), torch.no_grad():
                vectors = head.user_text_proj(self._encode(list(users.values())).to(self.device))
            rows = self._put_users(list(users), vectors, vectors.new_zeros(len(users)))
            for row, vector, text in zip(rows, vectors, users.values(), strict=True):
                self._profiles[row] = vector
                if self.user_texts is not None:
                    self.user_texts[row] = text
                if row in self._folded:  # known ratings: refit around the new profile
                    self._fit(row, *self._folded[row])
                elif row in self._interacted:
                    self._fit_interactions(row)
        logger.info("encoded %d user profiles; %d users", len(users), len(self.user_ids))

    def fold_in(self, user_id: str, ratings: Mapping[str, float], l2: float = 10.0) -> None:
        """Fit a user's bias and vector to a few ``{item_id: rating}``, with the items fixed.

        Closed-form ridge regression of ``rating - mean - b_i`` on ``b_u + <p_u, q_i>``, with
        penalty ``l2 * |(b_u, p_u) - prior|^2``. For a new user the prior is the profile vector
        (from :meth:`add_users`) and bias 0, or zero; for a trained user it is what the model
        learned, so the fit *updates* them with the new ratings, as far as they justify. Calling
        it again for the same user replaces the ratings given before (pass all you know). The
        ratings must lie on the training scale; the rated items count as seen. Rating models only
        (ranking models: :meth:`add_interactions`). The default ``l2`` was the best on the
        validation users of ml-100k p2u (``benchmarks/cold_users.py``).
        """
        if not self.is_rating:
            raise ValueError(
                "fold_in fits ratings, and this is a ranking model, whose scores are not ratings; "
                "add_interactions({user_id: [item_id, ...]}) fits a user from "
                "what they interacted with"
            )
        user_id = check_id(user_id, "fold_in", "user")
        if isinstance(ratings, Mapping) and not ratings:
            raise ValueError(f"fold_in: no ratings given for user {user_id!r}")
        ratings = id_mapping(ratings, "fold_in", "item", "rating", "{'50': 5.0, '181': 4.0}")
        values = [
            check_rating(r, "fold_in", f"item {i!r}", self.rating_scale) for i, r in ratings.items()
        ]
        if isinstance(l2, bool) or not isinstance(l2, (int, float)) or not 0 < l2 < float("inf"):
            raise ValueError(f"fold_in: l2 must be a positive number, got {l2!r}")
        items = self._items(list(ratings), "fold_in")
        with self._lock:
            if user_id not in self._user_index:
                self._put_users([user_id], torch.zeros(1, self.model.head.dim), torch.zeros(1))
            row = self._user_index[user_id]
            self._folded[row] = (items, torch.tensor(values), float(l2))
            self._fit(row, *self._folded[row])
            self._history[row] = np.concatenate([self._history[row], items.numpy()])
            self._seen[row] = np.union1d(self._seen[row], items.numpy())

    @torch.no_grad()
    def _fit(self, row: int, items: torch.Tensor, ratings: torch.Tensor, l2: float) -> None:
        vectors, biases = (t.cpu() for t in self._item_vectors(items))
        if row < self.num_trained_users:  # the trained vector and bias are the prior
            prior_vector, prior_bias = (
                t[0].cpu() for t in self.model.head.users(torch.tensor([row]))
            )
        else:
            prior_vector, prior_bias = self._profile_vector(row).cpu(), 0.0
        vector, bias = ridge_fold_in(
            vectors,
            biases,
            ratings,
            float(self.model.head.global_mean),
            prior_vector,
            float(prior_bias),
            l2,
        )
        self._put_users([self.user_ids[row]], vector[None], torch.tensor([bias]))

    def add_interactions(self, interactions: Mapping[str, Sequence[str]], l2: float = 0.05) -> None:
        """Record that users interacted with items, as ``{user_id: [item_id, ...]}`` (time order).

        Every model counts the items as seen (:meth:`recommend` leaves them out). A user the
        model does not know is added: a ranking model fits the user's vector to the items with its
        own loss (a softmax over the catalogue, ``l2`` towards the profile vector or zero); a
        rating model, which needs ratings to fit a user (:meth:`fold_in`), gives them the profile
        vector (or zero) and no bias, so they get the items' baseline scores. Known users keep
        their vectors (users added this way are refit with all their items). A history model
        (sequential) appends the items to the user's history, so the next call scores from it.
        """
        interactions = id_mapping(
            interactions, "add_interactions", "user", "list of item ids", "{'196': ['242', '302']}"
        )
        resolved = {
            u: self._items(id_list(items, "add_interactions", "item"), "add_interactions")
            for u, items in interactions.items()
        }
        with self._lock:
            for user_id, items in resolved.items():
                if self.is_sequential:  # the next call reads the longer history
                    if user_id not in self._user_index:
                        self._put_users(
                            [user_id], torch.zeros(1, self.model.head.dim), torch.zeros(1)
                        )
                    row = self._user_index[user_id]
                    self._history[row] = np.concatenate([self._history[row], items.numpy()])
                    self._seen[row] = np.union1d(self._seen[row], items.numpy())
                    self._user_cache = None
                    continue
                if user_id not in self._user_index:
                    self._put_users([user_id], torch.zeros(1, self.model.head.dim), torch.zeros(1))
                    self._interacted[self._user_index[user_id]] = np.zeros(0, dtype=np.int64)
                row = self._user_index[user_id]
                self._history[row] = np.concatenate([self._history[row], items.numpy()])
                self._seen[row] = np.union1d(self._seen[row], items.numpy())
                if row in self._interacted:
                    self._interacted[row] = np.concatenate([self._interacted[row], items.numpy()])
                    self._fit_interactions(row, l2)

    @torch.no_grad()
    def _fit_interactions(self, row: int, l2: float = 0.05) -> None:
        prior = self._profile_vector(row).cpu()
        if self.is_rating or len(self._interacted[row]) == 0:
            self._put_users([self.user_ids[row]], prior[None], torch.zeros(1))
            return
        vectors, biases = (t.cpu() for t in self._item_vectors())
        vector = softmax_fold_in(vectors, biases, torch.as_tensor(self._interacted[row]), prior, l2)
        self._put_users([self.user_ids[row]], vector[None], torch.zeros(1))

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
            if (
                allowed is not None
            ):  # only these items compete (a shelf of new arrivals, a genre ...)
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
            catalog = Catalog(
                user_ids=list(self.user_ids),
                item_ids=list(self.item_ids),
                item_texts=list(self.item_texts),
                user_texts=self.user_texts,
                item_fields=self.item_fields or None,
                rating_scale=self.rating_scale,
                seen_users=np.concatenate(
                    [np.full(len(v), u) for u, v in self._history.items()]
                    or [np.zeros(0, dtype=np.int64)]
                ),
                seen_items=np.concatenate(
                    list(self._history.values()) or [np.zeros(0, dtype=np.int64)]
                ),
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

    def _user_state(self) -> dict[str, torch.Tensor] | None:
        """The user table and what refits it, when it differs from the trained one."""
        if self.is_sequential or (
            self._user_cache is None and not (self._profiles or self._folded or self._interacted)
        ):
            # nothing beyond the trained weights (a history model's states come from histories)
            return None
        vectors, biases = self._user_table()
        state = {"vectors": vectors.cpu().contiguous(), "biases": biases.cpu().contiguous()}
        rows = sorted(self._profiles)
        state["profile_rows"] = torch.tensor(rows, dtype=torch.int64)
        state["profiles"] = (
            torch.stack([self._profiles[r].cpu() for r in rows])
            if rows
            else torch.zeros(0, self.model.head.dim)
        )
        rows = sorted(self._folded)
        state["fold_rows"] = torch.tensor(rows, dtype=torch.int64)
        state["fold_counts"] = torch.tensor(
            [len(self._folded[r][0]) for r in rows], dtype=torch.int64
        )
        state["fold_items"] = torch.cat(
            [self._folded[r][0] for r in rows] or [torch.zeros(0, dtype=torch.int64)]
        )
        state["fold_ratings"] = torch.cat([self._folded[r][1] for r in rows] or [torch.zeros(0)])
        state["fold_l2"] = torch.tensor([self._folded[r][2] for r in rows], dtype=torch.float64)
        rows = sorted(self._interacted)
        state["interacted_rows"] = torch.tensor(rows, dtype=torch.int64)
        state["interacted_counts"] = torch.tensor(
            [len(self._interacted[r]) for r in rows], dtype=torch.int64
        )
        state["interacted_items"] = torch.as_tensor(
            np.concatenate([self._interacted[r] for r in rows] or [np.zeros(0, dtype=np.int64)])
        )
        return state

    def _restore_users(self, state: dict[str, torch.Tensor]) -> None:
        self._user_cache = (state["vectors"].to(self.device), state["biases"].to(self.device))
        self._profiles = {
            int(r): v.to(self.device)
            for r, v in zip(state["profile_rows"], state["profiles"], strict=True)
        }
        items = torch.split(state["fold_items"], state["fold_counts"].tolist())
        ratings = torch.split(state["fold_ratings"], state["fold_counts"].tolist())
        self._folded = {
            int(r): (i, x, float(l2))
            for r, i, x, l2 in zip(
                state["fold_rows"], items, ratings, state["fold_l2"], strict=True
            )
        }
        items = torch.split(state["interacted_items"], state["interacted_counts"].tolist())
        self._interacted = {
            int(r): i.numpy() for r, i in zip(state["interacted_rows"], items, strict=True)
        }
