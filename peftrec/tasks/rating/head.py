"""The rating task's head: a biased dot product of the two towers, regressed on ratings."""

from __future__ import annotations

import torch
from torch import nn

from peftrec.models.towers import TwoTowers, shrunk_biases
from peftrec.models.traits import Traits


class RatingHead(TwoTowers):
    """Regression head: rating(u, i) = mean + b_u + b_i + <p_u, q_i>."""

    traits = Traits(ratings=True)

    def __init__(self, text_dim: int, num_users: int, num_items: int, dim: int = 64, **kwargs):
        super().__init__(text_dim, num_users, num_items, dim, **kwargs)
        self.global_mean = nn.Parameter(torch.zeros(()))
        self.user_bias = nn.Embedding(num_users, 1)
        nn.init.normal_(self.user_bias.weight, std=0.01)

    def users(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.user_vectors(index), self.user_bias(index).squeeze(-1)

    def score(
        self, user: tuple[torch.Tensor, torch.Tensor], item: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        """Ratings for aligned (user, item) rows of vectors and biases."""
        return self.global_mean + user[1] + item[1] + (user[0] * item[0]).sum(-1)

    def score_all(
        self, user: tuple[torch.Tensor, torch.Tensor], item: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        """Ratings of every user against every item: one matrix product, ``(users, items)``."""
        return self.global_mean + user[1][:, None] + item[1][None, :] + user[0] @ item[0].T

    @torch.no_grad()
    def init_biases(self, users: torch.Tensor, items: torch.Tensor, ratings: torch.Tensor) -> None:
        """Global mean and user/item biases from regularised averages of the training ratings."""
        num_items = (
            self.item_bias.num_embeddings if self.item_bias is not None else int(items.max()) + 1
        )
        biases = shrunk_biases(
            users.numpy(),
            items.numpy(),
            ratings.numpy(),
            self.user_bias.num_embeddings,
            num_items,
            item_biases=self.item_bias is not None,
        )
        self.global_mean.fill_(biases.mean)
        if self.item_bias is not None:
            self.item_bias.weight[:, 0] = torch.as_tensor(
                biases.item, dtype=self.item_bias.weight.dtype
            )
        self.user_bias.weight[:, 0] = torch.as_tensor(
            biases.user, dtype=self.user_bias.weight.dtype
        )
