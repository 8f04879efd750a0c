"""The taste head: the two towers' items; a user is the mean of their last items' vectors."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from peftrec.models.towers import TwoTowers
from peftrec.models.traits import Traits


class TasteHead(TwoTowers):
    """P(like) = sigmoid(b_i + <mean of the history's q_j, q_i>)."""

    traits = Traits(user="history")
    score_link = "sigmoid"
    history_length = 20
    """How many of a history's last items make the user."""

    def __init__(self, text_dim: int, num_items: int, dim: int = 64, **towers):
        super().__init__(text_dim, 0, num_items, dim, **towers)  # no user table

    def history_users(
        self, items: tuple[torch.Tensor, torch.Tensor], histories: Sequence[Sequence[int]]
    ) -> torch.Tensor:
        vectors = [
            items[0][torch.as_tensor(list(h)[-self.history_length :], dtype=torch.long)].mean(0)
            if len(h)
            else items[0].new_zeros(self.dim)
            for h in histories
        ]
        return torch.stack(vectors) if vectors else items[0].new_zeros(0, self.dim)

    def logits(self, users: torch.Tensor, items: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Aligned (user vector, item) rows."""
        return items[1] + (users * items[0]).sum(-1)

    def score(self, user, item):
        return torch.sigmoid(self.logits(user[0], item))

    def score_all(self, user, items):
        return torch.sigmoid(items[1][None, :] + user[0] @ items[0].T)
