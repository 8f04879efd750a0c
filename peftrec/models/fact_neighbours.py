"""Fact neighbours: what a user gave the items that share facts with the one scored.

A rating is partly a user's taste for what an item *is*: its author, its director, its
publisher. With ``model.fact_neighbours`` a rating head adds to each score the user's shrunk
mean residual over their rated items that share facts with the scored item:

    n(u, i) = gamma * sum_j w_ij e_uj / (sum_j w_ij + s),   w_ij = sum_g a_g |F_g(i) & F_g(j)|

over the user's rated items j, with ``e_uj = r_uj - (mean + b_u + b_j)`` the rating's residual
from the head's own biases (no gradient flows through it), ``F_g`` an item's entities of
relation group g (the knowledge tower's rows), ``a_g >= 0`` learned per group, ``s > 0`` a
learned shrinkage and ``gamma`` the term's weight, which starts at zero, so training starts from
the plain model. An item that shares nothing weighs nothing: a user who never rated an author's
books gets nothing from the author. It is the shrunk "user's own offset for the author" of the
baselines, generalised over every relation the knowledge graph has; a cold item (rated by no
one) gets it from its facts alone.

The sums factor by entity: ``sum_j w_ij e_uj = sum_{e in F(i)} a_g(e) E_u[e]``, with ``E_u[e]``
the user's residuals summed over the rated items that have ``e`` (``N_u[e]``: how many). Training
(:meth:`FactNeighbours.pair_term`) and serving (:func:`peftrec.app.neighbours.served_term`)
both compute it that way, never pairing items.
"""

from __future__ import annotations

import math

import torch
from torch import nn

START_SHRINK = 2.0  # s at the start: two sharing items count as much as the prior of none


def inverse_softplus(value: float) -> float:
    return math.log(math.expm1(value))


class FactNeighbours(nn.Module):
    """The term's learned weights, and (once trained) the training ratings it reads when served.

    ``users``, ``items`` and ``ratings`` are buffers filled when the head folds its histories
    (:meth:`set_ratings`), so a saved head carries what the served term sums; their length is
    the data's, and a saved head's is taken on load.
    """

    def __init__(self, num_groups: int):
        super().__init__()
        self.group_weight = nn.Parameter(torch.full((num_groups,), inverse_softplus(1.0)))
        self.shrink = nn.Parameter(torch.tensor(inverse_softplus(START_SHRINK)))
        self.gamma = nn.Parameter(torch.zeros(()))
        self.register_buffer("users", torch.zeros(0, dtype=torch.long))
        self.register_buffer("items", torch.zeros(0, dtype=torch.long))
        self.register_buffer("ratings", torch.zeros(0))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("users", "items", "ratings"):  # the saved data's length, not the empty one
            saved = state_dict.get(prefix + name)
            if saved is not None:
                setattr(self, name, torch.empty_like(saved, device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def set_ratings(self, users: torch.Tensor, items: torch.Tensor, ratings: torch.Tensor) -> None:
        """The training ratings the served term reads (row indices and raw ratings)."""
        device = self.gamma.device
        self.users = users.to(device=device, dtype=torch.long)
        self.items = items.to(device=device, dtype=torch.long)
        self.ratings = ratings.to(device=device, dtype=torch.float32)

    def weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(a_g, s)``: the per-group weights and the shrinkage, both positive."""
        return nn.functional.softplus(self.group_weight), nn.functional.softplus(self.shrink)

    def pair_term(
        self,
        users: torch.Tensor,
        targets: torch.Tensor,
        rated: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        own: torch.Tensor,
        num_entities: int,
    ) -> torch.Tensor:
        """``n(u, i)`` for pairs ``(users[k], targets[k])``.

        ``users``: each pair's row in ``rated``'s users (0..U-1); ``targets``: the scored items'
        entity rows ``(pairs, groups, width)`` (-1: none); ``rated``: the users' rated items as
        flat ``(user row, entity rows (n, groups, width), residual)``; ``own``: the residual of
        the pair's own rating where the user rated the target (NaN: not rated), taken out of
        its sums (a training pair's rating is not an input to its own prediction).
        """
        owner, facts, residual = rated
        a, s = self.weights()
        num_users = int(owner.max()) + 1 if len(owner) else 1
        sums, counts = entity_sums(owner, facts, residual, num_users, num_entities)
        real = targets >= 0
        at = users[:, None, None] * num_entities + targets.clamp(min=0)
        got, many = sums[at], counts[at]
        rated_own = ~torch.isnan(own)
        got = got - torch.where(rated_own, own, 0.0)[:, None, None]
        many = many - rated_own.to(many.dtype)[:, None, None]
        weight = a[None, :, None] * real.to(a.dtype)
        num = (weight * got).sum((1, 2))
        den = (weight * many).sum((1, 2)) + s
        return self.gamma * num / den


def entity_sums(
    owner: torch.Tensor,
    facts: torch.Tensor,
    residual: torch.Tensor,
    num_users: int,
    num_entities: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(E, N)`` as flat ``(num_users * num_entities,)`` tensors: each user's residual sum and
    count over their rated items having each entity."""
    real = facts >= 0
    at = (owner[:, None, None] * num_entities + facts.clamp(min=0))[real]
    values = residual[:, None, None].expand_as(facts)[real]
    size = num_users * num_entities
    sums = residual.new_zeros(size).index_add(0, at, values)
    counts = residual.new_zeros(size).index_add(0, at, torch.ones_like(values))
    return sums, counts
