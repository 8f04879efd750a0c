"""The ranking task's head: a dot product of the two towers, so ranking is one matrix product."""

from __future__ import annotations

import torch

from peftrec.models.towers import TwoTowers


class RankingHead(TwoTowers):
    """Ranking head: score(u, i) = b_i + <p_u, q_i>, so ranking all items is one matrix product."""

    def users(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        vector = self.user_vectors(index)
        return vector, vector.new_zeros(vector.shape[:-1])

    def score(
        self, user: tuple[torch.Tensor, torch.Tensor], item: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        return item[1] + (user[0] * item[0]).sum(-1)

    def score_all(
        self, user: tuple[torch.Tensor, torch.Tensor], item: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        return item[1][None, :] + user[0] @ item[0].T
