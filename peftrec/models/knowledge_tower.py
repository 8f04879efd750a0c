"""The knowledge tower: what is known about an item (its actors, director, awards ...) as pooled
entity embeddings, added to the item's vector and bias.

Facts are grouped by relation (``actor``, ``director``, ``award_won`` ...). For each group an
item's vector gets the mean of its entities' embeddings and its bias their mean bias; an item
with no entity in a group gets that group's "none" embedding instead, so missing knowledge is
itself a learned signal and an unlinked item is not pulled towards zero. Entities are shared by
items (an actor plays in many films), which is what carries what warm items taught to a new one:
only entities of at least ``min_count`` training items get a row of their own.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from peftrec.data.knowledge import INVERSE, RECEPTION, ItemKnowledge

# MovieLens-100K's Freebase relations: one group per kind of fact, each fact once (the graph
# holds most of them in both directions; the film's own relation is kept).
ML100K_GROUPS = {
    "film.film.actor": "actor",
    "film.film.genre": "genre",
    "film.film.directed_by": "director",
    "film.film.written_by": "writer",
    "film.film.produced_by": "producer",
    "film.film.cinematography": "cinematographer",
    "film.film.production_companies": "company",
    "film.film.country": "country",
    "film.film.language": "language",
    "film.film.rating": "content_rating",
    "film.film.subjects": "subject",
    "film.film.sequel": "series",
    "film.film.prequel": "series",
    "film.film.sequel" + INVERSE: "series",
    "film.film.prequel" + INVERSE: "series",
    "film.film.award_nomination": "award_nomination",
    "film.film.award_won": "award_won",
}
MAX_PER_GROUP = {"actor": 8}
DEFAULT_MAX = 4


class KnowledgeVocabulary:
    """The groups and the (group, entity) pairs that have rows, and how facts become rows."""

    def __init__(self, groups: Sequence[str], entities: Sequence[str]):
        self.groups = list(groups)
        self.entities = list(entities)  # "group\tentity"
        self.index = {e: k for k, e in enumerate(self.entities)}
        self.width = max([MAX_PER_GROUP.get(g, DEFAULT_MAX) for g in self.groups] or [1])

    @classmethod
    def build(
        cls,
        knowledge: ItemKnowledge,
        train_items: np.ndarray,
        *,
        relations: str = "all",
        group_map: Mapping[str, str] | None = None,
        min_count: int = 2,
    ) -> KnowledgeVocabulary:
        """From the facts of the items that have training interactions."""
        trained = set(np.asarray(train_items).tolist())
        counts: Counter[str] = Counter()
        groups: set[str] = set()
        seen: set[tuple[int, str]] = set()
        for item, relation, entity in zip(
            knowledge.items, knowledge.relations, knowledge.entities, strict=True
        ):
            group = group_of(relation, relations, group_map)
            if group is None:
                continue
            groups.add(group)
            key = f"{group}\t{entity}"
            if int(item) in trained and (int(item), key) not in seen:
                seen.add((int(item), key))
                counts[key] += 1
        return cls(sorted(groups), sorted(k for k, n in counts.items() if n >= min_count))

    def rows(
        self,
        facts: Sequence[tuple[str, str]],
        relations: str = "all",
        group_map: Mapping[str, str] | None = None,
    ) -> torch.Tensor:
        """``(groups, width)`` entity rows of one item's ``(relation, entity)`` facts, -1 padded."""
        out = torch.full((len(self.groups), self.width), -1, dtype=torch.long)
        filled = [0] * len(self.groups)
        for relation, entity in facts:
            group = group_of(relation, relations, group_map)
            row = self.index.get(f"{group}\t{entity}")
            if row is None:
                continue
            g = self.groups.index(group)
            if filled[g] < MAX_PER_GROUP.get(group, DEFAULT_MAX) and row not in out[g, : filled[g]]:
                out[g, filled[g]] = row
                filled[g] += 1
        return out

    def table(
        self,
        knowledge: ItemKnowledge,
        num_items: int,
        relations: str = "all",
        group_map: Mapping[str, str] | None = None,
    ) -> torch.Tensor:
        """``(items, groups, width)`` entity rows of every item."""
        facts: list[list[tuple[str, str]]] = [[] for _ in range(num_items)]
        for item, relation, entity in zip(
            knowledge.items, knowledge.relations, knowledge.entities, strict=True
        ):
            facts[int(item)].append((relation, entity))
        if not num_items:
            return torch.full((0, len(self.groups), self.width), -1, dtype=torch.long)
        return torch.stack([self.rows(f, relations, group_map) for f in facts])


def group_of(
    relation: str, relations: str = "all", group_map: Mapping[str, str] | None = None
) -> str | None:
    """The group of a relation (None: not used), with ``relations="pre_release"`` leaving out
    the relations that describe reception."""
    if relations == "pre_release" and relation.removesuffix(INVERSE) in RECEPTION:
        return None
    if group_map is None:
        return relation
    return group_map.get(relation)


class KnowledgeTower(nn.Module):
    """Pooled entity embeddings per group: ``(vector, bias)`` to add to an item's."""

    def __init__(
        self,
        num_items: int,
        dim: int,
        num_groups: int,
        num_entities: int,
        width: int,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.num_groups = num_groups
        self.dropout = dropout  # each fact is left out at this rate in training (no memorising)
        # rows 0..num_entities-1: entities; then one "none in this group" row per group
        self.embedding = nn.Embedding(num_entities + num_groups, dim)
        self.bias = nn.Embedding(num_entities + num_groups, 1)
        nn.init.normal_(self.embedding.weight, std=0.01)
        nn.init.zeros_(self.bias.weight)
        self.register_buffer(
            "facts", torch.full((num_items, num_groups, width), -1, dtype=torch.long)
        )
        self.num_entities = num_entities

    def forward(
        self, index: torch.Tensor | None, facts: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """For items ``index`` (rows of :attr:`facts`; -1: an item with none) or explicit
        ``facts`` ``(n, groups, width)``."""
        if facts is None:
            facts = self.facts[index.clamp(min=0)].clone()
            facts[index < 0] = -1
        real = facts >= 0
        if self.training and self.dropout:
            real = real & (torch.rand(real.shape, device=real.device) >= self.dropout)
        none = ~real.any(-1)  # (n, groups): no entity of this item in the group
        none_rows = self.num_entities + torch.arange(self.num_groups, device=facts.device)
        facts = torch.where(real, facts, 0)
        weights = real.to(self.embedding.weight.dtype) / real.sum(-1, keepdim=True).clamp(min=1)
        weights = torch.where(none.unsqueeze(-1), torch.zeros_like(weights), weights)
        vector = (self.embedding(facts) * weights.unsqueeze(-1)).sum((1, 2))
        bias = (self.bias(facts).squeeze(-1) * weights).sum((1, 2))
        none_w = none.to(vector.dtype)
        vector = vector + none_w @ self.embedding(none_rows)
        bias = bias + none_w @ self.bias(none_rows).squeeze(-1)
        return vector, bias

    def penalty(self) -> torch.Tensor:
        """Sum of squares of the entity tables (the tower's own ridge)."""
        return self.embedding.weight.square().sum() + self.bias.weight.square().sum()
