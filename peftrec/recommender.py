"""The app API: load a trained model, predict ratings, recommend items, add new items by text."""

from __future__ import annotations

import logging
import operator
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from .artifact import load_artifact
from .tokens import tokenize_texts

logger = logging.getLogger(__name__)


class Recommender:
    """A trained peftrec model plus its catalogue, with item vectors cached for serving.

    The catalogue is encoded once (lazily); afterwards scoring is a matrix product. Items added
    with :meth:`add_items` are encoded alone and scored from their text, since no ID embedding
    was learned for them.
    """

    def __init__(self, model, tokenizer, catalog, meta: dict, device: str = "cpu", batch_size: int = 256):
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.meta = meta
        self.device = device
        self.batch_size = batch_size
        self.user_ids = list(catalog.user_ids)
        self.item_ids = list(catalog.item_ids)
        self.item_texts = list(catalog.item_texts)
        self.num_trained_items = len(self.item_ids)
        self._user_index = {u: i for i, u in enumerate(self.user_ids)}
        self._item_index = {it: i for i, it in enumerate(self.item_ids)}
        order = np.argsort(catalog.seen_users, kind="stable")
        users, items = catalog.seen_users[order], catalog.seen_items[order]
        bounds = np.searchsorted(users, np.arange(len(self.user_ids) + 1))
        self._seen = {u: items[bounds[u] : bounds[u + 1]] for u in range(len(self.user_ids))}
        self._item_text_cache: torch.Tensor | None = None  # pooled encodings, one row per item

    @classmethod
    def from_pretrained(cls, folder: str | Path, *, device: str = "cpu", backbone: str | None = None,
                        trust_remote_code: bool = False) -> Recommender:
        """Load a folder written by a peftrec recipe (safetensors and JSON only)."""
        model, tokenizer, catalog, meta = load_artifact(folder, backbone=backbone,
                                                        trust_remote_code=trust_remote_code)
        return cls(model, tokenizer, catalog, meta, device=device)

    # -- catalogue ---------------------------------------------------------------------------
    def _encode(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = tokenize_texts(self.tokenizer, texts, self.meta["max_length"])
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
                           f"this model knows {len(self.user_ids)} users")
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
        users = self.model.head.users(self._users(user_ids).to(self.device))
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
        user = self.model.head.users(self._users([user_id]).to(self.device))
        encoded = self._encode(list(texts)).to(self.device)
        items = self.model.head.items(encoded, None)
        return self.model.head.score_all(user, items)[0].cpu().numpy()

    @torch.no_grad()
    def score_all(self, user_ids: Sequence[str] | None = None) -> np.ndarray:
        """Ratings of the given (default: all) users for every catalogue item, ``(users, items)``."""
        index = torch.arange(len(self.user_ids)) if user_ids is None else self._users(user_ids)
        return self.model.head.score_all(self.model.head.users(index.to(self.device)),
                                         self._item_vectors()).cpu().numpy()

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
