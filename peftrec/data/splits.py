"""The evaluation protocols as row splits (fixed, seed 0, fingerprints checked in the tests): p1
random, p2 cold-start items, p3 leave-one-out by time (the shared MovieLens-100K protocols); and
p2u, cold-start users, which is peftrec's own."""

from __future__ import annotations

import hashlib
from typing import Literal, NamedTuple, get_args

import numpy as np

from peftrec.data.errors import DataError
from peftrec.data.tables import RecDataset

Protocol = Literal["p1", "p2", "p3", "p2u", "p4", "all"]
PRODUCTION_VALID_SHARE = 0.05  # protocol "all": the random share of rows kept for early stopping


class Split(NamedTuple):
    """Sorted int64 row indices into `RecDataset.interactions`; unpacks as train, valid, test."""

    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray


def fingerprint(rows: np.ndarray) -> str:
    """`"{count}:{md5[:12]}"` of the sorted int64 row indices, as the protocols define it."""
    rows = np.sort(np.asarray(rows, dtype=np.int64))
    return f"{len(rows)}:{hashlib.md5(rows.tobytes()).hexdigest()[:12]}"


def split_rows(dataset: RecDataset, protocol: Protocol, seed: int = 0) -> Split:
    """Split the interaction rows by `protocol`.

    p1: a random 80/10/10 split of the rows.
    p2: 20% of the rated items are test items and the next 10% validation items; all their
        ratings go to test/validation, so no test or validation item is seen in training.
    p3: per user, rows ordered by (timestamp, row): the last is test, the one before it
        validation, the rest train. Users with fewer than 3 rows keep all of them in train.
    p2u: p2's procedure applied to users (peftrec's own protocol): 20% of
        the users who rated are test users and the next 10% validation users; all their ratings
        go to test/validation, so no test or validation user is seen in training.
    all: training for production: every row trains but a random 5% kept for validation (early
        stopping); no test split.
    """
    if protocol == "p4":
        raise DataError(
            "protocol p4 splits by time block and update step: use data.blocks.p4_split"
        )
    if protocol not in get_args(Protocol):
        raise DataError(
            f"unknown protocol {protocol!r}; choose 'p1' (random rating split), 'p2' (cold-start "
            "items), 'p3' (leave-one-out by time), 'p2u' (cold-start users) or 'all' (train on "
            "everything but a validation share, for production)"
        )
    inter = dataset.interactions
    n = len(inter)
    rng = np.random.default_rng(seed)
    if protocol == "all":
        perm = rng.permutation(n)
        n_valid = max(1, round(n * PRODUCTION_VALID_SHARE)) if n > 1 else 0
        return _split(perm[n_valid:], perm[:n_valid], np.zeros(0, dtype=np.int64))
    if protocol == "p1":
        perm = rng.permutation(n)
        return _split(perm[: n * 8 // 10], perm[n * 8 // 10 : n * 9 // 10], perm[n * 9 // 10 :])
    if protocol in ("p2", "p2u"):  # hold out whole items (p2) or whole users (p2u)
        codes, ids = (
            (inter.items, dataset.item_ids) if protocol == "p2" else (inter.users, dataset.user_ids)
        )
        held = rng.permutation(_sorted_rated(codes, ids))
        n_test, n_held = len(held) * 2 // 10, len(held) * 3 // 10
        is_test = np.isin(codes, held[:n_test])
        is_valid = np.isin(codes, held[n_test:n_held])
        return _split(*(np.flatnonzero(m) for m in (~is_test & ~is_valid, is_valid, is_test)))
    if inter.timestamps is None:
        raise DataError(f"protocol 'p3' needs timestamps, and dataset {dataset.name!r} has none")
    rows = np.arange(n)
    order = np.lexsort((rows, inter.timestamps, inter.users))  # by user, then time, then row
    users = inter.users[order]
    last = np.append(users[1:] != users[:-1], True)
    second_last = np.append(last[1:] & (users[1:] == users[:-1]), False)
    enough = np.bincount(inter.users)[users] >= 3
    test, valid = order[last & enough], order[second_last & enough]
    train = order[~((last | second_last) & enough)]
    return _split(train, valid, test)


def _sorted_rated(codes: np.ndarray, id_list: list[str]) -> np.ndarray:
    """Indices of the items (or users) that occur in ``codes``, sorted by id: numerically when
    every id is an integer."""
    codes = np.unique(codes)
    ids = [id_list[c] for c in codes]
    try:
        keys = [(int(i), i) for i in ids]
    except ValueError:
        keys = [(0, i) for i in ids]
    return codes[sorted(range(len(codes)), key=keys.__getitem__)]


def _split(train: np.ndarray, valid: np.ndarray, test: np.ndarray) -> Split:
    return Split(*(np.sort(np.asarray(part, dtype=np.int64)) for part in (train, valid, test)))


def check_splits(
    dataset: RecDataset, protocol: Protocol, parts: dict, train_fraction: float = 1.0
) -> None:
    """A protocol or train_fraction that leaves a split empty is a data error, reported now."""
    for name, part in parts.items():
        if len(part) or (
            protocol == "all" and name == "test"
        ):  # production training has no test split
            continue
        hint = {
            "p2": "p2 holds out the ratings of 20% (test) and 10% (validation) of the rated items, "
            "so it needs at least 10 rated items",
            "p2u": "p2u holds out the ratings of 20% (test) and 10% (validation) of the users who "
            "rated, so it needs at least 10 of them",
            "p3": (
                "p3 holds out each user's last two ratings, and only of users with at least 3 "
                "ratings"
            ),
            "p1": "p1 splits the ratings 80/10/10, so it needs at least 10 ratings",
            "all": "all keeps 5% of the ratings for validation, so it needs at least 2 ratings",
            "p4": "p4 cuts the ratings into 5 time blocks of 20,000",
            "tallrec-movie": "tallrec-movie keeps the last 10,000 records, 8,000 / 1,000 / 1,000",
            "tallrec-book": "tallrec-book keeps one record per user with more than 3 ratings",
        }[protocol]
        if name == "train" and train_fraction < 1:
            hint = f"data.train_fraction={train_fraction} kept none of the training ratings"
        raise DataError(
            f"dataset {dataset.name!r} ({len(dataset.interactions)} ratings, "
            f"{len(dataset.item_ids)} items, {len(dataset.user_ids)} users): protocol {protocol} "
            f"leaves no {name} ratings; {hint}"
        )
