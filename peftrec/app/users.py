"""The user side of the :class:`~peftrec.app.recommender.Recommender`: the user table and its cache,
each user's known interactions, and users added by profile (:meth:`add_users`), ratings
(:meth:`fold_in`) or interactions (:meth:`add_interactions`), with what saves and restores them.

Thread safety as in the rest of the recommender: each public method, and each helper that reads
or fills the user table, holds the recommender's one lock (``self._lock``); the other helpers run
only inside those, or while the recommender is built.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext

import numpy as np
import torch

from peftrec.app.fold_in import ridge_fold_in, softmax_fold_in
from peftrec.app.inputs import (
    check_id,
    check_rating,
    check_text,
    id_list,
    id_mapping,
    rows_of,
    warn_about_texts,
)
from peftrec.app.tables import Rows
from peftrec.artifact.folder import Catalog, histories
from peftrec.artifact.head_vectors import numpy32, user_table

logger = logging.getLogger("peftrec.app.recommender")  # the app API logs under one name


class RecommenderUsers:
    """The user-side methods of :class:`~peftrec.app.recommender.Recommender`, which inherits them.

    Not usable alone: it reads the recommender's model, lock, item vectors (``item_vectors_of``,
    from :mod:`peftrec.app.items`) and text encoder (``_encode``).
    """

    def _init_users(self, catalog: Catalog) -> None:
        """The user state of a loaded catalogue: histories, seen items, and added users' state."""
        # each user's known interactions in time order (a history model reads them) and as a set
        self._history = histories(catalog)
        # a preference model: the labels of those interactions (1: liked), aligned
        self._labels = (
            histories(catalog, catalog.seen_labels) if catalog.seen_labels is not None else None
        )
        self.seen = {u: np.unique(h) for u, h in self._history.items()}
        # (vectors, biases) per user, computed on first use, then changed row by row
        self._user_cache: tuple[Rows, Rows] | None = None
        self._profiles: dict[int, torch.Tensor] = {}  # added users' profile vectors, by user row
        # the ratings of folded-in users, by user row: (items, ratings, l2)
        self._folded: dict[int, tuple[torch.Tensor, torch.Tensor, float]] = {}
        self._interacted: dict[int, np.ndarray] = {}  # items of users added from interactions
        if catalog.user_state:
            self._restore_users(catalog.user_state)

    def history_of(self, row: int) -> np.ndarray:
        """The items a user (by row) is known to have interacted with, in time order."""
        return self._history[row]

    def user_rows(self, user_ids: Sequence[str], where: str = "predict") -> torch.Tensor:
        ids = [check_id(u, where, "user") for u in user_ids]
        with self._lock:
            return torch.as_tensor(rows_of(ids, self.user_index, where, "user"), dtype=torch.long)

    @torch.no_grad()
    def _user_rows(self) -> tuple[Rows, Rows]:
        """Every user's vector and bias (computed once, then changed row by row by writes)."""
        with self._lock:
            if self._user_cache is None:
                vectors, biases = self._compute_users(range(len(self.user_ids)))
                self._user_cache = (Rows(numpy32(vectors)), Rows(numpy32(biases)))
            return self._user_cache

    def _compute_users(self, rows: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The vectors and biases of users ``rows`` as the head makes them (a table model: its
        trained rows, whatever ``rows`` says)."""
        return user_table(
            self.model.head,
            self.item_vectors_of,
            [self._history[u] for u in rows],
            None if self._labels is None else [self._labels[u] for u in rows],
            self.num_trained_users,
            self.device,
        )

    def _user_table(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every user's vector and bias, on the device (a view of the cache on the CPU)."""
        with self._lock:
            return tuple(torch.from_numpy(t.array).to(self.device) for t in self._user_rows())

    def user_vectors_of(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with self._lock:
            index = torch.as_tensor(rows).cpu().numpy()
            arrays = [t.array[index] for t in self._user_rows()]
            return tuple(torch.from_numpy(a).to(self.device) for a in arrays)

    @torch.no_grad()
    def _refresh_users(self, rows: Sequence[int]) -> None:
        """Recompute the given users of a model whose users are their (labelled) histories."""
        rows = sorted(set(rows))
        if not rows:
            return
        vectors, biases = self._compute_users(rows)
        table = self._user_rows()
        table[0].put(rows, numpy32(vectors))
        table[1].put(rows, numpy32(biases))

    def _users_holding(self, items: np.ndarray) -> list[int]:
        """The users whose known interactions hold one of the item rows ``items`` (a pass over
        every interaction: made only when a write changes items that were already known)."""
        if len(items) == 0:
            return []
        users, held = self._history_pairs()
        return np.unique(users[np.isin(held, items)]).tolist()

    def _put_users(
        self, user_ids: Sequence[str], vectors: torch.Tensor, biases: torch.Tensor
    ) -> list[int]:
        """Store the vectors and biases of new or changed users; their rows."""
        with self._lock:
            table = self._user_rows()
            rows = []
            for user_id in user_ids:
                if user_id not in self.user_index:
                    self.user_index[user_id] = len(self.user_ids)
                    self.user_ids.append(user_id)
                    self.seen[self.user_index[user_id]] = np.zeros(0, dtype=np.int64)
                    self._history[self.user_index[user_id]] = np.zeros(0, dtype=np.int64)
                    if self.user_texts is not None:
                        self.user_texts.append("")
                rows.append(self.user_index[user_id])
            for part, values in zip(table, (vectors, biases), strict=True):
                part.resize(len(self.user_ids))
                part.put(rows, numpy32(values))
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
            # LoRA, IA3, ...: the adapter starts as the identity
            return self.model.adapters_disabled()
        raise ValueError(
            f"add_users: this model's profile encodings came from its backbone before training "
            f"(adapter {method}), which the model folder does not keep, so a new profile cannot "
            "be encoded the same way; fold_in(id, {item_id: rating}) works"
        )

    def add_users(
        self, users: Mapping[str, str], publishing: AbstractContextManager | None = None
    ) -> None:
        """The network side of :meth:`peftrec.Recommender.add_users`: all checked first, the
        profiles encoded without holding the lock reads take, then published in one step, inside
        ``publishing`` (as :meth:`add_items`)."""
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
            row = self.user_index.get(user_id)
            if row is not None and row < self.num_trained_users:  # trained rows never change
                raise ValueError(
                    f"add_users: user '{user_id}' was trained with its own profile, which cannot "
                    "be replaced; fold_in(id, {item_id: rating}) updates a user from ratings"
                )
        warn_about_texts(
            self.tokenizer, list(users.values()), list(users), self.spec.max_length, "add_users"
        )
        # the adapters are off for this pass only: no other encode runs meanwhile
        with self._network_lock, self._profile_encoding(), torch.no_grad():
            vectors = head.user_text_proj(self._encode(list(users.values())).to(self.device))
        with self._lock, publishing or nullcontext():  # publish: nothing below raises
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
        """The network side of :meth:`peftrec.Recommender.fold_in`."""
        if not self.traits.ratings:
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
        items = self.item_rows(list(ratings), "fold_in")
        with self._lock:
            if user_id not in self.user_index:
                self._put_users([user_id], torch.zeros(1, self.model.head.dim), torch.zeros(1))
            row = self.user_index[user_id]
            self._folded[row] = (items, torch.tensor(values), float(l2))
            self._fit(row, *self._folded[row])
            self._history[row] = np.concatenate([self._history[row], items.numpy()])
            self.seen[row] = np.union1d(self.seen[row], items.numpy())

    def folded_ratings(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """The item rows and ratings a user (row) was last folded in with."""
        items, ratings, _ = self._folded[row]
        return items.numpy(), ratings.double().numpy()

    @torch.no_grad()
    def _fit(self, row: int, items: torch.Tensor, ratings: torch.Tensor, l2: float) -> None:
        vectors, biases = (t.cpu() for t in self.item_vectors_of(items))
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
        """The network side of :meth:`peftrec.Recommender.add_interactions`."""
        interactions = id_mapping(
            interactions, "add_interactions", "user", "list of item ids", "{'196': ['242', '302']}"
        )
        resolved = {
            u: self.item_rows(id_list(items, "add_interactions", "item"), "add_interactions")
            for u, items in interactions.items()
        }
        if self._labels is not None:
            raise ValueError(
                "add_interactions: a preference model reads labelled histories; pass them to "
                "predict_proba(items, histories=[[(item_id, liked), ...], ...])"
            )
        with self._lock:
            longer = []  # a history model: the users whose history grew
            for user_id, items in resolved.items():
                if self.traits.history:  # their state is the one after the longer history
                    if user_id not in self.user_index:
                        self._put_users(
                            [user_id], torch.zeros(1, self.model.head.dim), torch.zeros(1)
                        )
                    row = self.user_index[user_id]
                    self._history[row] = np.concatenate([self._history[row], items.numpy()])
                    self.seen[row] = np.union1d(self.seen[row], items.numpy())
                    longer.append(row)
                    continue
                if user_id not in self.user_index:
                    self._put_users([user_id], torch.zeros(1, self.model.head.dim), torch.zeros(1))
                    self._interacted[self.user_index[user_id]] = np.zeros(0, dtype=np.int64)
                row = self.user_index[user_id]
                self._history[row] = np.concatenate([self._history[row], items.numpy()])
                self.seen[row] = np.union1d(self.seen[row], items.numpy())
                if row in self._interacted:
                    self._interacted[row] = np.concatenate([self._interacted[row], items.numpy()])
                    self._fit_interactions(row, l2)
            self._refresh_users(longer)

    @torch.no_grad()
    def _fit_interactions(self, row: int, l2: float = 0.05) -> None:
        prior = self._profile_vector(row).cpu()
        if self.traits.ratings or len(self._interacted[row]) == 0:
            self._put_users([self.user_ids[row]], prior[None], torch.zeros(1))
            return
        vectors, biases = (t.cpu() for t in self.item_vectors_of())
        vector = softmax_fold_in(vectors, biases, torch.as_tensor(self._interacted[row]), prior, l2)
        self._put_users([self.user_ids[row]], vector[None], torch.zeros(1))

    def _history_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """Every user's known interactions as aligned (user row, item row) arrays, in time order."""
        with self._lock:
            users = [np.full(len(v), u) for u, v in self._history.items()]
            items = list(self._history.values())
            empty = [np.zeros(0, dtype=np.int64)]
            return np.concatenate(users or empty), np.concatenate(items or empty)

    def _user_state(self) -> dict[str, torch.Tensor] | None:
        """The user table and what refits it, when it differs from the trained one."""
        if self.traits.history or (
            len(self.user_ids) == self.num_trained_users
            and not (self._profiles or self._folded or self._interacted)
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
        self._user_cache = (Rows(numpy32(state["vectors"])), Rows(numpy32(state["biases"])))
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
