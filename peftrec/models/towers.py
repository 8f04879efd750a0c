"""The two towers that sit on top of the language model: item vectors from pooled texts (with
optional ID rows and facts), user vectors from a table; each task's head builds on them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch
from torch import nn

from peftrec.models.knowledge_tower import KnowledgeTower
from peftrec.models.traits import Traits

USER_SHRINK, ITEM_SHRINK = 10.0, 25.0


class RecOutput(NamedTuple):
    """What a two-tower head's training step returns."""

    scores: torch.Tensor  # (pairs,) or, with candidates, (pairs, items)
    penalty: torch.Tensor  # mean L2 of the pairs' user and item vectors and biases
    source: torch.Tensor  # L_S of the step (0 without a source objective, or in eval mode)
    user: tuple[torch.Tensor, torch.Tensor]  # the pairs' user vectors and biases
    items: tuple[torch.Tensor, torch.Tensor]  # the batch items' vectors and biases


class Biases(NamedTuple):
    """Mean rating and regularised user and item offsets from it."""

    mean: float
    user: np.ndarray
    item: np.ndarray


def shrunk_biases(
    users: np.ndarray,
    items: np.ndarray,
    ratings: np.ndarray,
    num_users: int,
    num_items: int,
    *,
    user_shrink: float = USER_SHRINK,
    item_shrink: float = ITEM_SHRINK,
    item_biases: bool = True,
) -> Biases:
    """``mean``, ``b_i = sum(r - mean) / (n_i + item_shrink)`` and ``b_u`` the same over the
    residuals ``r - mean - b_i`` (over ``r - mean`` with ``item_biases=False``).

    The regularised averages a rating head starts from, and the classical baseline the
    benchmarks compare with. Shrinkage pulls users and items with few ratings towards 0.
    """
    ratings = np.asarray(ratings, dtype=np.float64)
    mean = float(ratings.mean())
    item = np.bincount(items, ratings - mean, num_items) / (
        np.bincount(items, minlength=num_items) + item_shrink
    )
    residual = ratings - mean - (item[items] if item_biases else 0.0)
    user = np.bincount(users, residual, num_users) / (
        np.bincount(users, minlength=num_users) + user_shrink
    )
    return Biases(mean, user, item)


class TwoTowers(nn.Module):
    """Item and user towers over pooled LM encodings of item texts.

    Item tower: q_i = W h_i (+ e_i), b_i = w.h_i (+ c_i), with h_i the pooled LM encoding of the
    item's text and e_i, c_i an optional item-ID embedding and bias. Items unknown to the ID table
    (index -1: added after training) are scored from their text alone; with ``id_dropout`` the
    ID part of each item is dropped at that rate while training (DropoutNet), so the text part
    alone is calibrated to the full score and such items compete with the trained ones.
    User tower: p_u = user-ID embedding (+ V g_u, g_u a fixed encoding of the user's profile text).
    """

    traits: ClassVar[Traits] = Traits()
    """What the rest of peftrec reads of this head (:mod:`peftrec.models.traits`)."""

    score_link = "identity"
    """How ``offset + b_u + b_i + <p_u, q_i>`` becomes a score (``sigmoid`` for probabilities):
    what lets an app serve saved vectors (:mod:`peftrec.artifact.vectors`) without the network."""

    def __init__(
        self,
        text_dim: int,
        num_users: int,
        num_items: int,
        dim: int = 64,
        *,
        item_ids: bool = True,
        item_text: bool = True,
        user_text_dim: int | None = None,
        dropout: float = 0.0,
        id_dropout: float = 0.0,
        knowledge: dict | None = None,
    ):
        super().__init__()
        if not (item_ids or item_text):
            raise ValueError(
                "an item needs an ID embedding, its text, or both (model.item_ids, model.item_text)"
            )
        self.item_proj = nn.Linear(text_dim, dim, bias=False) if item_text else None
        self.item_text_bias = nn.Linear(text_dim, 1) if item_text else None
        self.item_emb = nn.Embedding(num_items, dim) if item_ids else None
        self.item_bias = nn.Embedding(num_items, 1) if item_ids else None
        # no table without users (a history model: a user is their history)
        self.user_emb = nn.Embedding(num_users, dim) if num_users else None
        self.user_text_proj = nn.Linear(user_text_dim, dim, bias=False) if user_text_dim else None
        self.register_buffer(
            "user_text", torch.zeros(num_users, user_text_dim or 0), persistent=True
        )
        self.dropout = nn.Dropout(dropout)
        if id_dropout and not (item_ids and item_text):
            raise ValueError(
                "model.item_id_dropout needs items with both an ID embedding and a text"
            )
        self.id_dropout = id_dropout
        # {"groups", "entities", "width"}: the knowledge tower's sizes
        # (peftrec.models.knowledge_tower)
        self.knowledge = None
        if knowledge:
            self.knowledge = KnowledgeTower(
                num_items,
                dim,
                knowledge["groups"],
                knowledge["entities"],
                knowledge["width"],
                knowledge.get("dropout", 0.0),
            )
        for table in (self.item_emb, self.item_bias, self.user_emb):
            if table is not None:
                nn.init.normal_(table.weight, std=0.01)
        if item_text:
            nn.init.normal_(self.item_proj.weight, std=0.01)
            nn.init.zeros_(self.item_text_bias.weight)
            nn.init.zeros_(self.item_text_bias.bias)
        self.text_dim, self.dim = text_dim, dim

    @classmethod
    def traits_for(cls, args: Mapping[str, Any]) -> Traits:
        """The traits of a head built from ``args`` (its saved arguments, ``spec.head``)."""
        return cls.traits

    def items(
        self,
        text: torch.Tensor,
        index: torch.Tensor | None = None,
        facts: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Item vectors and biases from pooled text ``(n, text_dim)`` and ID indices
        (-1: unknown); with a knowledge tower, from the items' facts too (``facts``: entity rows
        of items the head's table does not hold, e.g. added after training)."""
        if self.item_proj is not None:
            vector = self.item_proj(self.dropout(text))
            bias = self.item_text_bias(text).squeeze(-1)
        else:  # ID-only items: the text is ignored
            vector, bias = text.new_zeros(len(text), self.dim), text.new_zeros(len(text))
        if self.item_emb is not None and index is not None:
            known = (index >= 0).unsqueeze(-1).to(vector.dtype)
            if (
                self.training and self.id_dropout
            ):  # DropoutNet: the text alone must stand for the item
                known = known * (torch.rand_like(known) >= self.id_dropout).to(known.dtype)
            safe = index.clamp(min=0)
            vector = vector + self.item_emb(safe) * known
            bias = bias + self.item_bias(safe).squeeze(-1) * known.squeeze(-1)
        if self.knowledge is not None:
            if index is None and facts is None:  # texts alone: items with no known facts
                index = torch.full((len(text),), -1, dtype=torch.long, device=text.device)
            extra = self.knowledge(index, facts)
            vector, bias = vector + extra[0], bias + extra[1]
        return vector, bias

    def knowledge_penalty(self) -> torch.Tensor:
        """Sum of squares of the knowledge tower's entity tables (0 without one)."""
        if self.knowledge is None:
            return self.reference_parameter().new_zeros(())
        return self.knowledge.penalty()

    def step(
        self,
        text: torch.Tensor,
        item_index: torch.Tensor,
        source: torch.Tensor,
        users: torch.Tensor,
        positions: torch.Tensor,
        candidates: bool = False,
    ) -> RecOutput:
        """Scores, the L2 penalty and L_S for the pairs ``(users, items[positions])`` of a step.

        ``text`` holds the pooled encoding of each distinct item of the step once (rows
        ``item_index``; :meth:`~peftrec.models.network.RecModel.forward` encodes them, and
        computes ``source``, the step's L_S); ``positions`` points every pair at its item's row, so
        one LM pass serves all the pairs of its items. With ``candidates``, each user is scored
        against every item of the batch.
        """
        items = self.items(text, item_index)
        item = (items[0][positions], items[1][positions])
        user = self.pair_users(users, item_index[positions])
        scores = self.score_all(user, items) if candidates else self.score(user, item)
        return RecOutput(scores, self.penalty(user, item), source, user, items)

    def user_vectors(self, index: torch.Tensor) -> torch.Tensor:
        vector = self.user_emb(index)
        if self.user_text_proj is not None:
            vector = vector + self.user_text_proj(self.user_text[index])
        return vector

    def users(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """User vectors and biases for user indices."""
        raise NotImplementedError

    def pair_users(
        self, index: torch.Tensor, items: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The users of training pairs ``(index, items)`` (item rows, -1: unknown): a head whose
        users read what they rated leaves each pair's own item out (the target is not an input)."""
        return self.users(index)

    def reference_parameter(self) -> torch.Tensor:
        """A parameter of the head (for the device and dtype of new tensors)."""
        return next(self.parameters())

    def weight_penalty(self) -> torch.Tensor:
        """Sum of squares of the text-to-item weights (a ridge on the map from text to item vector
        and bias: what lets items never rated, scored from their text alone, generalise)."""
        if self.item_proj is None:
            return self.reference_parameter().new_zeros(())
        return self.item_proj.weight.square().sum() + self.item_text_bias.weight.square().sum()

    @staticmethod
    def penalty(
        user: tuple[torch.Tensor, torch.Tensor], item: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        """Mean L2 of the whole user and item vectors and biases over the rows of a batch."""
        return (
            user[0].square().sum(-1)
            + item[0].square().sum(-1)
            + user[1].square()
            + item[1].square()
        ).mean()
