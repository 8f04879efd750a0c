"""Protocol p4, continual updates: the interactions cut into blocks in time order.

All rows ordered by (timestamp, row) and cut into ``blocks`` blocks of ``size`` rows, B1..B5 on
ml-100k. Block k's held-out share (its random 10%, drawn with ``default_rng(k)`` as the first
rows of a permutation of its rows) is never trained on: it measures forgetting once later
blocks have been learned. A model is trained on B1, updated with B2, B3, B4 in turn, and after
each update scored on the next block and on the earlier held-out shares.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .errors import DataError
from .tables import RecDataset

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
