"""The rating task's head: a biased dot product of the two towers, regressed on ratings.

With ``history=True`` a user is also what they rated (the implicit feedback of SVD++, and its
rating-weighted twin of the asymmetric models): ``p_u = e_u + (B sum_j q_j + A sum_j (r_uj -
mean) q_j) / |R(u)|`` over the user's training ratings R(u), with ``q_j`` the item tower's vectors
(text, ID, facts) and A, B learned ``dim x dim`` maps that start at zero, so training starts from
the plain model. A training pair's own rating is left out of its user (:meth:`pair_users`). The
recipe hands the head the histories and the pooled text of the catalogue (:meth:`set_history`,
refreshed when the backbone changes); a saved model holds the term folded into its user table
(:meth:`fold_history`), so serving reads plain vectors.

With ``fact_neighbours=True`` (and a knowledge tower) each score also adds the user's shrunk
residual over their rated items that share facts with the scored one
(:mod:`peftrec.models.fact_neighbours`); it depends on the pair, so a saved head keeps the
training ratings it reads and the app adds the term to the vectors' scores.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from peftrec.models.fact_neighbours import FactNeighbours
from peftrec.models.towers import TwoTowers, shrunk_biases
from peftrec.models.traits import Traits


class RatedHistory:
    """Each user's training ratings as one flat, user-sorted list (items, centred ratings) with
    per-user offsets, and the pooled text of every catalogue item the items are read from."""

    def __init__(
        self, users: np.ndarray, items: np.ndarray, ratings: np.ndarray, num_users: int, mean: float
    ):
        self.num_items = int(items.max()) + 1 if len(items) else 1
        keys = users.astype(np.int64) * self.num_items + items
        order = np.argsort(keys, kind="stable")  # by user, then item
        counts = np.bincount(users, minlength=num_users)
        self.keys = torch.as_tensor(keys[order])
        self.items = torch.as_tensor(items[order], dtype=torch.long)
        self.mean = mean
        self.weights = torch.as_tensor(ratings[order] - mean, dtype=torch.float32)
        self.starts = torch.as_tensor(np.concatenate([[0], np.cumsum(counts)[:-1]]))
        self.counts = torch.as_tensor(counts)
        self.catalogue: torch.Tensor | None = None

    def to(self, device: torch.device) -> RatedHistory:
        for name in ("keys", "items", "weights", "starts", "counts"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def rows_of_pairs(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """The flat row of each (user, item) pair in the histories; -1 where it is not there."""
        keys = users * self.num_items + items.clamp(min=0)
        rows = torch.searchsorted(self.keys, keys).clamp(max=max(len(self.keys) - 1, 0))
        found = (items >= 0) & (items < self.num_items) & (self.keys[rows] == keys)
        return torch.where(found, rows, torch.full_like(rows, -1))

    def of(self, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The flat items, weights and bag offsets of ``users``' histories (one bag per user)."""
        counts = self.counts[users]
        offsets = torch.cumsum(counts, 0) - counts
        within = torch.arange(int(counts.sum()), device=counts.device) - torch.repeat_interleave(
            offsets, counts
        )
        rows = torch.repeat_interleave(self.starts[users], counts) + within
        return self.items[rows], self.weights[rows], offsets


class RatingHead(TwoTowers):
    """Regression head: rating(u, i) = mean + b_u + b_i + <p_u, q_i>."""

    traits = Traits(ratings=True)

    def __init__(
        self,
        text_dim: int,
        num_users: int,
        num_items: int,
        dim: int = 64,
        *,
        history: bool = False,
        fact_neighbours: bool = False,
        **kwargs,
    ):
        super().__init__(text_dim, num_users, num_items, dim, **kwargs)
        self.global_mean = nn.Parameter(torch.zeros(()))
        self.user_bias = nn.Embedding(num_users, 1)
        nn.init.normal_(self.user_bias.weight, std=0.01)
        self.history_plain = self.history_rated = None
        if history:
            self.history_plain = nn.Linear(dim, dim, bias=False)
            self.history_rated = nn.Linear(dim, dim, bias=False)
            nn.init.zeros_(self.history_plain.weight)
            nn.init.zeros_(self.history_rated.weight)
        self.neighbours = None
        if fact_neighbours:
            if self.knowledge is None:
                raise ValueError(
                    "model.fact_neighbours reads the items' facts: it needs a knowledge tower "
                    "(model.knowledge=all or pre_release, and the data's facts)"
                )
            self.neighbours = FactNeighbours(self.knowledge.num_groups)
        self.rated: RatedHistory | None = None  # not a buffer: data, set by the recipe

    def set_history(
        self,
        users: np.ndarray,
        items: np.ndarray,
        ratings: np.ndarray,
        catalogue: torch.Tensor,
    ) -> None:
        """The users' training ratings and the pooled text of every item (``(items, text_dim)``)
        the history term reads; call again with a fresh ``catalogue`` after the backbone changed
        (:meth:`set_catalogue`)."""
        if self.history_plain is None and self.neighbours is None:
            raise ValueError(
                "this rating head reads no histories (built without history or fact_neighbours)"
            )
        device = self.reference_parameter().device
        self.rated = RatedHistory(
            users, items, ratings, self.user_bias.num_embeddings, float(self.global_mean.detach())
        ).to(device)
        self.set_catalogue(catalogue)

    def set_catalogue(self, catalogue: torch.Tensor) -> None:
        """The pooled text the history term reads item vectors from (after the backbone moved)."""
        if self.rated is not None:
            self.rated.catalogue = catalogue.detach().to(self.reference_parameter().device)

    def history_term(
        self, index: torch.Tensor, leave_out: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """``(B sum q_j + A sum (r_uj - mean) q_j) / |R(u)|`` for user rows ``index``, without
        the item ``leave_out[k]`` in row k's sums (a training pair's own rating is not an input);
        None when the head reads no histories (none set, or folded into the table)."""
        if self.history_plain is None or self.rated is None or self.rated.catalogue is None:
            return None
        catalogue = self.rated.catalogue
        vectors = self.items(catalogue, torch.arange(len(catalogue), device=catalogue.device))[0]
        items, weights, offsets = self.rated.of(index)
        bag = nn.functional.embedding_bag
        plain = bag(items, vectors, offsets, mode="sum")
        rated = bag(items, vectors, offsets, mode="sum", per_sample_weights=weights)
        count = self.rated.counts[index].to(vectors.dtype)
        if leave_out is not None:
            rows = self.rated.rows_of_pairs(index, leave_out)
            own = (rows >= 0).to(vectors.dtype)
            safe = rows.clamp(min=0)
            mine = vectors[self.rated.items[safe]] * own.unsqueeze(-1)
            plain = plain - mine
            rated = rated - mine * self.rated.weights[safe].unsqueeze(-1)
            count = count - own
        scale = count.clamp(min=1).reciprocal().unsqueeze(-1)
        return (self.history_plain(plain) + self.history_rated(rated)) * scale

    @torch.no_grad()
    def fold_history(self) -> None:
        """Add every user's history term to their table row and forget the histories: the user
        table then stands alone (what a saved model serves, and what fold-in starts from). The
        fact-neighbour term keeps the ratings it reads (the app adds it to the vectors' scores)."""
        self._move_history_into_table(+1.0)
        if self.neighbours is not None and self.rated is not None:
            rated = self.rated
            users = torch.repeat_interleave(
                torch.arange(len(rated.counts), device=rated.counts.device), rated.counts
            )
            self.neighbours.set_ratings(users, rated.items, rated.weights + rated.mean)
        self.rated = None

    @torch.no_grad()
    def unfold_history(self) -> None:
        """Take the history term out of the table rows, so the users' vectors stay what the table
        held: a warm start from a saved (folded) model reads the histories again and must not
        count them twice."""
        self._move_history_into_table(-1.0)

    def _move_history_into_table(self, sign: float) -> None:
        """Add ``sign`` times every user's history term (without dropout) to their table row."""
        if self.rated is None or self.history_plain is None:
            return
        was_training = self.training
        self.eval()  # no dropout in the folded vectors
        rows = torch.arange(self.user_bias.num_embeddings, device=self.rated.items.device)
        term = self.history_term(rows)
        self.train(was_training)
        if term is not None:
            self.user_emb.weight.add_(term.to(self.user_emb.weight.dtype), alpha=sign)

    def users(
        self, index: torch.Tensor, leave_out: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        vectors = self.user_vectors(index)
        term = self.history_term(index, leave_out)
        if term is not None:
            vectors = vectors + term
        return vectors, self.user_bias(index).squeeze(-1)

    def pair_users(
        self, index: torch.Tensor, items: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The users of pairs ``(index, items)``: without the pair's own rating in their history,
        and with the fact-neighbour term of the pair in the bias (it depends on the item)."""
        vectors, bias = self.users(index, items)
        if self.neighbours is not None and self.rated is not None:
            bias = bias + self.neighbour_term(index, items)
        return vectors, bias

    def neighbour_term(self, index: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``n(u, i)`` of :mod:`peftrec.models.fact_neighbours` for pairs ``(index, items)``
        (item rows of the catalogue; -1: unknown, no term), from the histories set."""
        rated, facts = self.rated, self.knowledge.facts
        with torch.no_grad():  # residuals from the head's biases as it scores (no dropout)
            was_training = self.training
            self.eval()
            catalogue = rated.catalogue
            biases = self.items(catalogue, torch.arange(len(catalogue), device=catalogue.device))[1]
            self.train(was_training)
            users, local = torch.unique(index, return_inverse=True)
            flat_items, weights, _ = rated.of(users)
            owner = torch.repeat_interleave(
                torch.arange(len(users), device=index.device), rated.counts[users]
            )
            base = self.global_mean + self.user_bias(users).squeeze(-1)

            def residual(centred, rated_items, user_rows):  # the rating minus the biases
                return centred + rated.mean - base[user_rows] - biases[rated_items]

            flat = residual(weights, flat_items, owner)
            row = rated.rows_of_pairs(index, items)  # the pair's own rating (-1: none)
            safe = row.clamp(min=0)
            own = residual(rated.weights[safe], rated.items[safe], local)
            own = torch.where(row >= 0, own, torch.full_like(own, float("nan")))
        targets = torch.where((items >= 0)[:, None, None], facts[items.clamp(min=0)], -1)
        return self.neighbours.pair_term(
            local, targets, (owner, facts[flat_items], flat), own, self.knowledge.num_entities
        )

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
