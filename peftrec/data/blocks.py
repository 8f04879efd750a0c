"""Protocol p4, continual updates: the interactions cut into blocks in time order.

All rows ordered by (timestamp, row) and cut into ``blocks`` blocks of ``size`` rows, B1..B5 on
ml-100k. Block k's held-out share (its random 10%, drawn with ``default_rng(k)`` as the first
rows of a permutation of its rows) is never trained on: it measures forgetting once later
blocks have been learned. A model is trained on B1, updated with B2, B3, B4 in turn, and after
each update scored on the next block and on the earlier held-out shares. A ranking model's targets
are each user's first interaction of a block (:func:`first_per_user`), ranked against every item
the user has not interacted with before (:func:`p4_history`).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import numpy as np

from peftrec.data.errors import DataError
from peftrec.data.splits import Split
from peftrec.data.tables import RecDataset

BLOCKS, BLOCK_SIZE, HELD_SHARE = 5, 20_000, 0.1


class Block(NamedTuple):
    """Sorted int64 row indices of one time block: what trains, and its held-out share."""

    train: np.ndarray
    held: np.ndarray

    @property
    def rows(self) -> np.ndarray:
        return np.sort(np.concatenate([self.train, self.held]))


def time_blocks(
    dataset: RecDataset,
    blocks: int = BLOCKS,
    size: int = BLOCK_SIZE,
    held_share: float = HELD_SHARE,
) -> list[Block]:
    """Protocol p4's blocks B1..B<blocks>, in time order."""
    inter = dataset.interactions
    if inter.timestamps is None:
        raise DataError(f"protocol p4 needs timestamps, and dataset {dataset.name!r} has none")
    if blocks * size > len(inter):
        raise DataError(
            f"protocol p4: {blocks} blocks of {size} rows need {blocks * size} ratings; "
            f"dataset {dataset.name!r} has {len(inter)}"
        )
    rows = np.arange(len(inter))
    order = np.lexsort((rows, inter.timestamps))  # by time, ties in file order
    out = []
    for k in range(1, blocks + 1):
        block = order[(k - 1) * size : k * size]
        permuted = np.random.default_rng(k).permutation(block)
        n_held = round(size * held_share)
        out.append(Block(np.sort(permuted[n_held:]), np.sort(permuted[:n_held])))
    return out


def p4_split(
    dataset: RecDataset,
    block: int,
    window: Literal["all", "new"] = "all",
    replay: float = 0.0,
    seed: int = 0,
) -> Split:
    """The rows of update step ``block`` (t = 1..4): train on B_t's training rows (``window="new"``,
    plus a random ``replay`` share of the earlier blocks' training rows) or on those of B_1..B_t
    (``"all"``: a full retrain); validate (early stopping) on B_t's held-out share; test on all of
    B_{t+1}."""
    blocks = time_blocks(dataset)
    if not 1 <= block < len(blocks):
        raise DataError(f"protocol p4: data.block must be 1..{len(blocks) - 1}, got {block}")
    now, earlier = blocks[block - 1], blocks[: block - 1]
    if window == "all":
        train = np.concatenate([b.train for b in [*earlier, now]])
    else:
        train = now.train
        if replay > 0 and earlier:
            past = np.concatenate([b.train for b in earlier])
            keep = np.random.default_rng(seed).random(len(past)) < replay
            train = np.concatenate([train, past[keep]])
    return Split(np.sort(train), now.held, blocks[block].rows)


def first_per_user(dataset: RecDataset, rows: np.ndarray) -> np.ndarray:
    """Sorted rows: each user's first of ``rows`` in time (ties in file order), a ranking
    model's next-item target in a block."""
    inter = dataset.interactions
    rows = np.asarray(rows, dtype=np.int64)
    ordered = rows[np.lexsort((rows, inter.timestamps[rows]))]
    _, first = np.unique(inter.users[ordered], return_index=True)
    return np.sort(ordered[first])


def p4_ranking_split(
    dataset: RecDataset,
    block: int,
    window: Literal["all", "new"] = "all",
    replay: float = 0.0,
    seed: int = 0,
) -> Split:
    """:func:`p4_split` for a ranking model: the same training rows; validate on each user's first
    row of B_t's held-out share, test on each user's first row of B_{t+1}."""
    train, held, following = p4_split(dataset, block, window, replay, seed)
    return Split(train, first_per_user(dataset, held), first_per_user(dataset, following))


def p4_history(dataset: RecDataset, block: int) -> tuple[np.ndarray, np.ndarray]:
    """``(learned, before)`` at update step ``block``: the training rows of B_1..B_t (what the
    model line has learned, a warm start's parents included: they make a user or item warm) and
    every row of B_1..B_t (what a user has interacted with before the next block: excluded from
    a ranking)."""
    blocks = time_blocks(dataset)[:block]
    learned = np.sort(np.concatenate([b.train for b in blocks]))
    return learned, np.sort(np.concatenate([b.rows for b in blocks]))


def histories_before(dataset: RecDataset, pool: np.ndarray, targets: np.ndarray) -> list:
    """Each target row's history: the items of its user's ``pool`` rows that come before it in
    (timestamp, row) order, oldest first (what a history model reads before the target)."""
    return [dataset.interactions.items[r] for r in rows_before(dataset, pool, targets)]


def rows_before(dataset: RecDataset, pool: np.ndarray, targets: np.ndarray) -> list:
    """Each target row's user's ``pool`` rows that come before it in (timestamp, row) order,
    oldest first."""
    inter = dataset.interactions
    rows = np.arange(len(inter))
    position = np.empty(len(inter), dtype=np.int64)
    position[np.lexsort((rows, inter.timestamps))] = rows
    pool = np.asarray(pool, dtype=np.int64)
    pool = pool[np.lexsort((position[pool], inter.users[pool]))]  # by user, then time
    starts = np.searchsorted(inter.users[pool], np.arange(len(dataset.user_ids) + 1))
    out = []
    for target in np.asarray(targets, dtype=np.int64):
        user = inter.users[target]
        mine = pool[starts[user] : starts[user + 1]]
        out.append(mine[position[mine] < position[target]])
    return out


def earlier_held(dataset: RecDataset, block: int) -> np.ndarray:
    """The held-out shares of B_1..B_{t-1}: what measures forgetting after update t."""
    blocks = time_blocks(dataset)[: block - 1]
    return np.sort(np.concatenate([b.held for b in blocks])) if blocks else np.zeros(0, np.int64)
