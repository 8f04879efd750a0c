"""The app API: load a trained model, predict ratings, recommend items, add new items by text and
new users by profile text or a few ratings."""

from __future__ import annotations

import logging
import math
import numbers
import operator
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from peft import PeftModel

from .artifact import load_artifact
from .heads import RatingHead
from .tokens import tokenize_texts

logger = logging.getLogger(__name__)


class Recommender:
    """A trained peftrec model plus its catalogue, with item and user vectors cached for serving.

    The catalogue is encoded once (lazily); afterwards scoring is a matrix product. Items added
    with :meth:`add_items` are encoded alone and scored from their text, since no ID embedding
    was learned for them. Users added with :meth:`add_users` (a profile text) or
    :meth:`fold_in` (a few ratings) get a vector and bias of their own, next to the trained ones.
    """

    def __init__(self, model, tokenizer, catalog, meta: dict | None = None, device: str = "cpu",
                 batch_size: int = 256):
        self.model = model.to(device).eval()
        self.spec = model.spec
        self.tokenizer = tokenizer
        self.meta = meta or {"spec": model.spec}
        self.device = device
        self.batch_size = batch_size
        self.user_ids = list(catalog.user_ids)
        self.item_ids = list(catalog.item_ids)
        self.item_texts = list(catalog.item_texts)
        self.num_trained_items = len(self.item_ids)
        self.num_trained_users = len(self.user_ids)
        self._user_index = {u: i for i, u in enumerate(self.user_ids)}
        self._item_index = {it: i for i, it in enumerate(self.item_ids)}
        order = np.argsort(catalog.seen_users, kind="stable")
        users, items = catalog.seen_users[order], catalog.seen_items[order]
        bounds = np.searchsorted(users, np.arange(len(self.user_ids) + 1))
        self._seen = {u: items[bounds[u] : bounds[u + 1]] for u in range(len(self.user_ids))}
        self._item_text_cache: torch.Tensor | None = None  # pooled encodings, one row per item
        self._user_cache: tuple[torch.Tensor, torch.Tensor] | None = None  # (vectors, biases) per user
        self._profiles: dict[int, torch.Tensor] = {}  # added users' profile vectors, by user row
        self._folded: dict[int, tuple[torch.Tensor, torch.Tensor, float]] = {}  # (items, ratings, l2)

    @classmethod
    def from_pretrained(cls, folder: str | Path, *, device: str = "cpu", backbone: str | None = None,
                        trust_remote_code: bool = False) -> Recommender:
        """Load a folder written by a peftrec recipe (safetensors and JSON only)."""
        model, tokenizer, catalog, meta = load_artifact(folder, backbone=backbone,
                                                        trust_remote_code=trust_remote_code)
        return cls(model, tokenizer, catalog, meta, device=device)

    # -- catalogue ---------------------------------------------------------------------------
    def _encode(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = tokenize_texts(self.tokenizer, texts, self.spec.max_length)
        return self.model.encode_texts(tokens, self.batch_size)

    def _item_text(self) -> torch.Tensor:
        if self._item_text_cache is None:
            self._item_text_cache = self._encode(self.item_texts)
        return self._item_text_cache

    def add_items(self, items: Mapping[str, str]) -> None:
        """Add new items, or change the text of known ones, as ``{item_id: text}``.

        Only these texts are encoded; the rest of the cached catalogue is kept.
        """
        if not items:
            raise ValueError("add_items: no items given")
        for item_id, text in items.items():
            if not isinstance(text, str):
                raise TypeError(f"add_items: the text of item '{item_id}' must be a string, got {text!r}")
            if not text.strip():
                raise ValueError(f"add_items: item '{item_id}' has an empty text")
        cache = self._item_text()
        ids = [str(i) for i in items]
        encoded = self._encode([items[i] for i in items])
        rows = []
        for item_id, text in zip(ids, items.values(), strict=True):
            if item_id not in self._item_index:
                self._item_index[item_id] = len(self.item_ids)
                self.item_ids.append(item_id)
                self.item_texts.append(text)
            else:
                self.item_texts[self._item_index[item_id]] = text
            rows.append(self._item_index[item_id])
        grown = torch.zeros(len(self.item_ids), cache.shape[1])
        grown[: len(cache)] = cache
        grown[rows] = encoded
        self._item_text_cache = grown
        logger.info("encoded %d item texts; catalogue has %d items", len(ids), len(self.item_ids))

    # -- lookups -----------------------------------------------------------------------------
    def _users(self, user_ids: Sequence[str]) -> torch.Tensor:
        missing = [u for u in user_ids if str(u) not in self._user_index]
        if missing:
            raise KeyError(f"unknown user id {missing[0]!r} ({len(missing)} unknown of {len(user_ids)}); "
                           f"this model knows {len(self.user_ids)} users; add one with add_users({{id: "
                           f"profile}}) or fold_in(id, {{item_id: rating}})")
        return torch.as_tensor([self._user_index[str(u)] for u in user_ids], dtype=torch.long)

    def _items(self, item_ids: Sequence[str]) -> torch.Tensor:
        missing = [i for i in item_ids if str(i) not in self._item_index]
        if missing:
            raise KeyError(f"unknown item id {missing[0]!r} ({len(missing)} unknown of {len(item_ids)}); "
                           f"add it first with add_items({{id: text}})")
        return torch.as_tensor([self._item_index[str(i)] for i in item_ids], dtype=torch.long)

    @torch.no_grad()
    def _item_vectors(self, rows: torch.Tensor | None = None):
        text = self._item_text()
        rows = torch.arange(len(text)) if rows is None else rows
        id_index = torch.where(rows < self.num_trained_items, rows, torch.full_like(rows, -1))
        return self.model.head.items(text[rows].to(self.device), id_index.to(self.device))

    # -- users -------------------------------------------------------------------------------
    @torch.no_grad()
    def _user_vectors(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._user_cache is None:
            self._user_cache = self.model.head.users(torch.arange(self.num_trained_users, device=self.device))
        vectors, biases = self._user_cache
        rows = rows.to(self.device)
        return vectors[rows], biases[rows]

    def _put_users(self, user_ids: Sequence[str], vectors: torch.Tensor, biases: torch.Tensor) -> list[int]:
        """Store the vectors and biases of new or changed users; their rows."""
        table = [t.clone() for t in self._user_vectors(torch.arange(len(self.user_ids)))]
        rows = []
        for user_id in user_ids:
            if user_id not in self._user_index:
                self._user_index[user_id] = len(self.user_ids)
                self.user_ids.append(user_id)
                self._seen[self._user_index[user_id]] = np.zeros(0, dtype=np.int64)
            rows.append(self._user_index[user_id])
        table = [torch.cat([t, t.new_zeros(len(self.user_ids) - len(t), *t.shape[1:])]) for t in table]
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
        backbone, method = self.model.backbone, self.spec.adapter.method
        if isinstance(backbone, PeftModel) and not backbone.active_peft_config.is_prompt_learning:
            return self.model.adapters_disabled()  # LoRA, IA3, ...: the adapter starts as the identity
        if method == "frozen":
            return self.model.adapters_disabled()  # a plain, untrained backbone: nothing to turn off
        raise ValueError(f"add_users: this model's profile encodings came from its backbone before training "
                         f"(adapter {method or 'prompt/prefix'}), which the model folder does not keep, so a "
                         "new profile cannot be encoded the same way; fold_in(id, {item_id: rating}) works")

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
            raise ValueError("add_users: this model was trained without model.user_text=true, so it has no "
                             "tower that turns a profile text into a user vector; fold_in(id, {item_id: "
                             "rating}) adds a user from a few ratings instead")
        if not users:
            raise ValueError("add_users: no users given")
        for user_id, text in users.items():
            if not isinstance(text, str):
                raise TypeError(f"add_users: the profile of user '{user_id}' must be a string, got {text!r}")
            if not text.strip():
                raise ValueError(f"add_users: user '{user_id}' has an empty profile")
            row = self._user_index.get(str(user_id))
            if row is not None and row < self.num_trained_users:
                raise ValueError(f"add_users: user '{user_id}' was trained with its own profile, which cannot "
                                 "be replaced; fold_in(id, {item_id: rating}) refits a user from ratings")
        ids = [str(u) for u in users]
        if len(set(ids)) != len(ids):
            raise ValueError("add_users: a user id is given twice (as a string and as a number?)")
        with self._profile_encoding(), torch.no_grad():
            vectors = head.user_text_proj(self._encode(list(users.values())).to(self.device))
        rows = self._put_users(ids, vectors, vectors.new_zeros(len(ids)))
        for row, vector in zip(rows, vectors, strict=True):
            self._profiles[row] = vector
            if row in self._folded:  # known ratings: refit around the new profile
                self._fit(row, *self._folded[row])
        logger.info("encoded %d user profiles; %d users", len(ids), len(self.user_ids))

    def fold_in(self, user_id: str, ratings: Mapping[str, float], l2: float = 10.0) -> None:
        """Fit a user's bias and vector to a few ``{item_id: rating}``, with the items fixed.

        Closed-form ridge regression of ``rating - mean - b_i`` on ``b_u + <p_u, q_i>``, with
        penalty ``l2 * (b_u**2 + |p_u - p_0|**2)``: ``p_0`` is the user's profile vector (from
        :meth:`add_users`, or a trained user's profile part), zero without one. So the fit starts
        from the profile and moves as far as the ratings justify. A new id adds a user; a known
        one gets its vector replaced, fitted to exactly these ratings (pass all you know). The
        rated items count as seen for :meth:`recommend`. Rating models only. The default ``l2``
        was the best on the validation users of ml-100k p2u (``benchmarks/cold_users.py``).
        """
        if not isinstance(self.model.head, RatingHead):
            raise ValueError("fold_in fits ratings, and this is a ranking model, whose scores are not ratings; "
                             "fold it in with a rating model (recipes/train_rating.py)")
        if not isinstance(ratings, Mapping):
            raise TypeError(f"fold_in: pass the ratings of user '{user_id}' as {{item_id: rating}}, "
                            f"got {type(ratings).__name__}")
        if not ratings:
            raise ValueError(f"fold_in: no ratings given for user '{user_id}'")
        for item_id, rating in ratings.items():
            if isinstance(rating, bool) or not isinstance(rating, numbers.Real):
                raise TypeError(f"fold_in: the rating of item '{item_id}' must be a number, got {rating!r}")
            if not math.isfinite(rating):
                raise ValueError(f"fold_in: the rating of item '{item_id}' is {rating}, not a finite number")
        if isinstance(l2, bool) or not isinstance(l2, numbers.Real) or not 0 < l2 < math.inf:
            raise ValueError(f"fold_in: l2 must be a positive number, got {l2!r}")
        items = self._items(list(ratings))
        if len(set(items.tolist())) != len(items):
            raise ValueError(f"fold_in: an item is given twice in the ratings of user '{user_id}'")
        user_id = str(user_id)
        if user_id not in self._user_index:
            self._put_users([user_id], torch.zeros(1, self.model.head.dim), torch.zeros(1))
        row = self._user_index[user_id]
        self._folded[row] = (items, torch.tensor([float(r) for r in ratings.values()]), float(l2))
        self._fit(row, *self._folded[row])
        self._seen[row] = np.union1d(self._seen[row], items.numpy())

    @torch.no_grad()
    def _fit(self, row: int, items: torch.Tensor, ratings: torch.Tensor, l2: float) -> None:
        """Ridge regression of one user's bias and vector on fixed item vectors (float64)."""
        vectors, biases = (t.double().cpu() for t in self._item_vectors(items))
        target = ratings.double() - self.model.head.global_mean.double().cpu() - biases
        design = torch.cat([torch.ones(len(items), 1, dtype=torch.float64), vectors], dim=1)  # [1, q_i]
        prior = torch.cat([torch.zeros(1, dtype=torch.float64), self._profile_vector(row).double().cpu()])
        gram = design.T @ design + l2 * torch.eye(design.shape[1], dtype=torch.float64)
        solution = prior + torch.linalg.solve(gram, design.T @ (target - design @ prior))
        self._put_users([self.user_ids[row]], solution[None, 1:], solution[:1])

    # -- scoring -----------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, user_ids: Sequence[str], item_ids: Sequence[str]) -> np.ndarray:
        """Predicted ratings for aligned pairs ``(user_ids[k], item_ids[k])``."""
        if isinstance(user_ids, str) or isinstance(item_ids, str):
            raise TypeError("predict: pass lists of ids, e.g. predict(['196'], ['242'])")
        if len(user_ids) != len(item_ids):
            raise ValueError(f"predict: {len(user_ids)} users but {len(item_ids)} items; pass aligned lists")
        if len(user_ids) == 0:
            return np.zeros(0, dtype=np.float32)
        users = self._user_vectors(self._users(user_ids))
        items = self._item_vectors(self._items(item_ids))
        return self.model.head.score(users, items).cpu().numpy()

    @torch.no_grad()
    def predict_texts(self, user_id: str, texts: Sequence[str]) -> np.ndarray:
        """Predicted ratings of one user for items given only by their texts (not stored)."""
        if isinstance(texts, str):
            raise TypeError("predict_texts: pass a list of texts, e.g. predict_texts('196', ['a comedy'])")
        if len(texts) == 0:
            return np.zeros(0, dtype=np.float32)
        if any(not isinstance(t, str) or not t.strip() for t in texts):
            raise ValueError("predict_texts: every text must be a non-empty string")
        user = self._user_vectors(self._users([user_id]))
        encoded = self._encode(list(texts)).to(self.device)
        items = self.model.head.items(encoded, None)
        return self.model.head.score_all(user, items)[0].cpu().numpy()

    @torch.no_grad()
    def score_all(self, user_ids: Sequence[str] | None = None) -> np.ndarray:
        """Ratings of the given (default: all) users for every catalogue item, ``(users, items)``."""
        index = torch.arange(len(self.user_ids)) if user_ids is None else self._users(user_ids)
        return self.model.head.score_all(self._user_vectors(index), self._item_vectors()).cpu().numpy()

    def recommend(self, user_id: str, k: int = 10, exclude_seen: bool = True) -> list[tuple[str, float]]:
        """The ``k`` highest-scored items for ``user_id`` as ``(item_id, score)``, best first."""
        if isinstance(k, bool) or not hasattr(type(k), "__index__") or operator.index(k) < 1:
            raise ValueError(f"recommend: k must be a positive integer, got {k!r}")
        k = operator.index(k)  # numpy and other integer types
        scores = self.score_all([user_id])[0]
        if exclude_seen:
            scores[self._seen[self._user_index[str(user_id)]]] = -np.inf
        available = int(np.isfinite(scores).sum())
        if k > available:
            raise ValueError(f"recommend: k={k} but only {available} items are left to recommend to user {user_id!r}")
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(self.item_ids[i], float(scores[i])) for i in top]
