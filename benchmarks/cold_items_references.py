"""The reference points of ``benchmarks/cold_items.py``, fitted on P2's training ratings only
(mu: their mean; shrunk averages as in the recipe's bias initialisation), every setting chosen on
the P2 validation items:

(a) mu + b_u (a test item's bias is unknown, so 0);
(b) (a) + a ridge of the residual on the item's genres and release-year bucket;
(b+) (b) + a per-user ridge on the same features;
(c), (c') oracles: the item's true mean residual on its own test ratings, with or without b_u.
"""

from __future__ import annotations

import itertools

import numpy as np

from peftrec.metrics import rmse
from peftrec.models.towers import Biases, shrunk_biases

USER_SHRINK_GRID = (1.0, 3.0, 10.0, 30.0, 100.0)  # RatingHead.init_biases uses 10
ALPHA_GRID = (0.1, 1.0, 10.0, 100.0, 1e3, 1e4, 1e5)
USER_RIDGE_GRID = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0)
YEAR_BUCKETS = (
    1930,
    1940,
    1950,
    1960,
    1970,
    1980,
    1990,
    1993,
    1994,
    1995,
    1996,
    1997,
)  # lower edges


def fit_biases(
    users: np.ndarray,
    items: np.ndarray,
    ratings: np.ndarray,
    num_users: int,
    num_items: int,
    user_shrink: float,
) -> Biases:
    """mu, b_i (shrinkage 25, as the rating head) and b_u (shrinkage ``user_shrink``,
    net of b_i)."""
    return shrunk_biases(users, items, ratings, num_users, num_items, user_shrink=user_shrink)


def item_features(dataset) -> tuple[np.ndarray, list[str]]:
    """Genres multi-hot and release-year bucket one-hot per item, and the column names."""
    genres = [[g for g in text.split(", ") if g] for text in dataset.item_fields["genres"]]
    names = sorted({g for gs in genres for g in gs})
    years = [int(y) if y.isdigit() else None for y in dataset.item_fields["year"]]
    buckets = (
        ["year unknown", f"year < {YEAR_BUCKETS[0]}"]
        + [
            f"year {low}-{high - 1}" if high - low > 1 else f"year {low}"
            for low, high in itertools.pairwise(YEAR_BUCKETS)
        ]
        + [f"year >= {YEAR_BUCKETS[-1]}"]
    )
    features = np.zeros((len(dataset.item_ids), len(names) + len(buckets)))
    for row, (gs, year) in enumerate(zip(genres, years, strict=True)):
        features[row, [names.index(g) for g in gs]] = 1.0
        bucket = 0 if year is None else 1 + int(np.searchsorted(YEAR_BUCKETS, year, side="right"))
        features[row, len(names) + bucket] = 1.0
    return features, names + buckets


def fit_ridge(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
    """Ridge of y on the rows of x with an unpenalised intercept: (weights, intercept)."""
    x_mean, y_mean = x.mean(axis=0), y.mean()
    centred = x - x_mean
    weights = np.linalg.solve(
        centred.T @ centred + alpha * np.eye(x.shape[1]), centred.T @ (y - y_mean)
    )
    return weights, float(y_mean - x_mean @ weights)


def user_ridge(
    users: np.ndarray, x: np.ndarray, y: np.ndarray, num_users: int, lam: float
) -> np.ndarray:
    """Per user, ridge weights (no intercept) of y on the rows of x: ``(num_users, features)``."""
    order = np.argsort(users, kind="stable")
    bounds = np.searchsorted(users[order], np.arange(num_users + 1))
    weights = np.zeros((num_users, x.shape[1]))
    for user in range(num_users):
        rows = order[bounds[user] : bounds[user + 1]]
        a = x[rows]
        weights[user] = np.linalg.solve(a.T @ a + lam * np.eye(x.shape[1]), a.T @ y[rows])
    return weights


class References:
    """Predictions of (a) and (b) fitted on the training rows, settings chosen on the
    validation rows."""

    def __init__(self, dataset, split):
        inter = dataset.interactions
        self.inter, self.shape = inter, (len(dataset.user_ids), len(dataset.item_ids))
        self.features, self.feature_names = item_features(dataset)
        train, valid = split.train, split.valid
        self.fitted = {
            l_u: fit_biases(
                inter.users[train], inter.items[train], inter.ratings[train], *self.shape, l_u
            )
            for l_u in USER_SHRINK_GRID
        }
        self.tuning_a = {
            l_u: rmse(self.predict_a(valid, l_u) - inter.ratings[valid]) for l_u in USER_SHRINK_GRID
        }
        self.tuning_b = {}
        for l_u in USER_SHRINK_GRID:
            biases = self.fitted[l_u]
            residual = inter.ratings[train] - biases.mean - biases.user[inter.users[train]]
            for alpha in ALPHA_GRID:
                ridge = fit_ridge(self.features[inter.items[train]], residual, alpha)
                self.tuning_b[l_u, alpha] = (
                    rmse(self.predict_b(valid, l_u, ridge) - inter.ratings[valid]),
                    ridge,
                )
        self.l_u = min(USER_SHRINK_GRID, key=self.tuning_a.get)
        self.l_u_b, self.alpha = min(self.tuning_b, key=lambda key: self.tuning_b[key][0])
        self.ridge = self.tuning_b[self.l_u_b, self.alpha][1]
        # (b+): each user's own ridge on the same features, fitted to the residual of (b)
        residual = inter.ratings[train] - self.predict_b(train)
        self.tuning_user = {}
        for lam in USER_RIDGE_GRID:
            prefs = user_ridge(
                inter.users[train], self.features[inter.items[train]], residual, self.shape[0], lam
            )
            self.tuning_user[lam] = (
                rmse(self.predict_user(valid, prefs) - inter.ratings[valid]),
                prefs,
            )
        self.user_lambda = min(self.tuning_user, key=lambda lam: self.tuning_user[lam][0])
        self.prefs = self.tuning_user[self.user_lambda][1]

    def predict_a(self, rows: np.ndarray, l_u: float | None = None) -> np.ndarray:
        biases = self.fitted[self.l_u if l_u is None else l_u]
        return biases.mean + biases.user[self.inter.users[rows]]

    def predict_b(self, rows: np.ndarray, l_u: float | None = None, ridge=None) -> np.ndarray:
        weights, intercept = self.ridge if ridge is None else ridge
        return (
            self.predict_a(rows, self.l_u_b if l_u is None else l_u)
            + self.features[self.inter.items[rows]] @ weights
            + intercept
        )

    def predict_user(self, rows: np.ndarray, prefs: np.ndarray | None = None) -> np.ndarray:
        prefs = self.prefs if prefs is None else prefs
        return self.predict_b(rows) + np.einsum(
            "ij,ij->i", prefs[self.inter.users[rows]], self.features[self.inter.items[rows]]
        )

    def oracle(self, rows: np.ndarray, with_users: bool = True) -> np.ndarray:
        """(c) or (c'): the base prediction plus each item's own mean residual on ``rows``."""
        base = (
            self.predict_a(rows) if with_users else np.full(len(rows), self.fitted[self.l_u].mean)
        )
        return item_mean_corrected(base, self.inter.ratings[rows], self.inter.items[rows])


def item_mean_corrected(
    predictions: np.ndarray, ratings: np.ndarray, items: np.ndarray
) -> np.ndarray:
    """``predictions`` plus each item's mean of ``ratings - predictions``."""
    _, index = np.unique(items, return_inverse=True)
    offset = np.bincount(index, ratings - predictions) / np.bincount(index)
    return predictions + offset[index]
