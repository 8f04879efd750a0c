"""Fact neighbours as an app serves them: a rating model's ``model.fact_neighbours`` term
(:mod:`peftrec.models.fact_neighbours`) from numpy alone.

:class:`ServedNeighbours` keeps each user's ratings (the training ratings saved in the head,
then those :meth:`~peftrec.Recommender.fold_in` gives) and the catalogue's facts, and adds the
user's shrunk residual over the rated items sharing facts with each scored item. Residuals are
taken from the served biases at the time of the read, so a refit user's term follows their new
bias; items added with facts take part from their first read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from peftrec.app.tables import Rows
from peftrec.artifact.folder import Catalog
from peftrec.artifact.vectors import ServingVectors

KEYS = ("neighbours.group_weight", "neighbours.shrink", "neighbours.gamma")
DATA = ("neighbours.users", "neighbours.items", "neighbours.ratings")


def softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, np.asarray(x, dtype=np.float64))


class ServedNeighbours:
    """The term's weights, every user's ratings and the catalogue's entity rows."""

    def __init__(self, head: dict[str, np.ndarray], facts: np.ndarray, folded: dict | None = None):
        """``head``: the head's ``neighbours.*`` arrays (as saved); ``facts``: ``(items, groups,
        width)`` entity rows of the catalogue; ``folded``: fold-in ratings by user row."""
        self.group_weight = softplus(head[KEYS[0]])
        self.shrink = float(softplus(head[KEYS[1]]))
        self.gamma = float(head[KEYS[2]])
        users, items, ratings = (np.asarray(head[k]) for k in DATA)
        order = np.argsort(users, kind="stable")
        bounds = np.searchsorted(users[order], np.arange(int(users.max(initial=-1)) + 2))
        self.trained = {
            u: (items[order[bounds[u] : bounds[u + 1]]], ratings[order[bounds[u] : bounds[u + 1]]])
            for u in range(len(bounds) - 1)
        }
        self.folded = dict(folded or {})
        self.set_facts(facts)

    @classmethod
    def from_folder(cls, folder: Path, catalog: Catalog) -> ServedNeighbours:
        from safetensors.numpy import load_file

        head = load_file(folder / "head.safetensors")
        return cls(head, catalogue_facts(head["knowledge.facts"], catalog), folded_ratings(catalog))

    @classmethod
    def from_head(cls, head, catalog: Catalog) -> ServedNeighbours:
        """From a rating head in memory (its fact-neighbour data filled by ``fold_history``)."""
        arrays = {
            f"neighbours.{k}": v.detach().cpu().numpy()
            for k, v in head.neighbours.state_dict().items()
        }
        trained = head.knowledge.facts.cpu().numpy()
        return cls(arrays, catalogue_facts(trained, catalog), folded_ratings(catalog))

    def set_facts(self, facts: np.ndarray) -> None:
        """The catalogue's entity rows."""
        self._facts = Rows(np.asarray(facts, dtype=np.int64), fill=-1)
        self.num_entities = int(np.max(facts, initial=-1)) + 1

    def put_facts(self, rows: np.ndarray, facts: np.ndarray) -> None:
        """Items ``rows`` (new or changed) have these entity rows."""
        self._facts.put(rows, facts)
        self.num_entities = max(self.num_entities, int(np.max(facts, initial=-1)) + 1)

    @property
    def facts(self) -> np.ndarray:
        """``(items, groups, width)`` entity rows of the catalogue (-1: none)."""
        return self._facts.array

    def record(self, row: int, items: np.ndarray, ratings: np.ndarray) -> None:
        """A user's fold-in ratings (they replace the user's earlier ones, as the fit does)."""
        self.folded[row] = (np.asarray(items, np.int64), np.asarray(ratings, np.float64))

    def ratings_of(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """A user's known ratings: the trained ones, then their fold-in ones."""
        parts = [p for p in (self.trained.get(row), self.folded.get(row)) if p is not None]
        if not parts:
            return np.zeros(0, np.int64), np.zeros(0)
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def user_term(
        self, row: int, vectors: ServingVectors, scored: np.ndarray | None = None
    ) -> np.ndarray:
        """The term of one user (row) for the ``scored`` item rows (default: every item)."""
        items, ratings = self.ratings_of(row)
        residuals = ratings - (
            vectors.offset + vectors.user_biases[row] + vectors.item_biases[items]
        )
        return served_term(
            self.group_weight,
            self.shrink,
            self.gamma,
            self.facts if scored is None else self.facts[scored],
            self.facts[items],
            residuals,
            self.num_entities,
        )

    def scores(self, rows: np.ndarray, vectors: ServingVectors) -> np.ndarray:
        """``(rows, items)``: the term of users ``rows`` for every item."""
        out = np.zeros((len(rows), len(self.facts)), dtype=np.float32)
        for k, row in enumerate(rows):
            out[k] = self.user_term(int(row), vectors)
        return out

    def pairs(self, users: np.ndarray, items: np.ndarray, vectors: ServingVectors) -> np.ndarray:
        """The term of aligned ``(users[k], items[k])`` rows."""
        out = np.zeros(len(users), dtype=np.float32)
        for row in np.unique(users):
            mine = users == row
            out[mine] = self.user_term(int(row), vectors, items[mine])
        return out


def catalogue_facts(trained: np.ndarray, catalog: Catalog) -> np.ndarray:
    """Every catalogue item's entity rows: the head's trained items', then the added items'
    (``catalog.item_facts``), -1 for added items saved without any."""
    parts = [np.asarray(trained, dtype=np.int64)]
    if catalog.item_facts is not None and len(catalog.item_facts):
        parts.append(np.asarray(catalog.item_facts, dtype=np.int64))
    facts = np.concatenate(parts)
    missing = len(catalog.item_ids) - len(facts)
    if missing > 0:
        facts = np.concatenate([facts, np.full((missing, *facts.shape[1:]), -1, np.int64)])
    return facts


def folded_ratings(catalog: Catalog) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """The fold-in ratings a saved user state holds, by user row (numpy; the engine restores
    its own copy, with torch, in ``peftrec.app.users``)."""
    state = catalog.user_state
    if not state or "fold_rows" not in state:
        return {}
    bounds = np.cumsum([0, *np.asarray(state["fold_counts"]).tolist()])
    items, ratings = np.asarray(state["fold_items"]), np.asarray(state["fold_ratings"])
    return {
        int(r): (items[bounds[k] : bounds[k + 1]], ratings[bounds[k] : bounds[k + 1]])
        for k, r in enumerate(np.asarray(state["fold_rows"]).tolist())
    }


def served_term(
    group_weight: np.ndarray,
    shrink: float,
    gamma: float,
    targets: np.ndarray,
    rated: np.ndarray,
    residuals: np.ndarray,
    num_entities: int,
) -> np.ndarray:
    """``n(u, i)`` of one user for the scored items (numpy): ``targets`` and ``rated`` are the
    entity rows ``(n, groups, width)`` of the scored items and of the user's rated ones,
    ``residuals`` the rated ones' residuals."""
    if not len(rated) or gamma == 0:
        return np.zeros(len(targets), dtype=np.float64)
    real = rated >= 0
    values = np.broadcast_to(residuals[:, None, None], rated.shape)[real]
    sums = np.bincount(rated[real], values, num_entities)
    counts = np.bincount(rated[real], minlength=num_entities).astype(np.float64)
    real = targets >= 0
    at = np.where(real, targets, 0)
    weight = group_weight[None, :, None] * real
    num = (weight * sums[at]).sum((1, 2))
    den = (weight * counts[at]).sum((1, 2)) + shrink
    return gamma * num / den
