"""Binary preference records: will the user like the next item, given their last ten (labelled)?

Protocol ``tallrec-movie`` rebuilds TALLRec's MovieLens-100K benchmark (Bao et al., RecSys 2023,
their ``preprocess_movie.py``) from the ratings: label ``int(rating > 3)``; each user's rows sorted
by timestamp (ties in file order); for every position ``i >= 10`` a record holds the previous ten
items with their labels, the target item and its label; users in order of their first row in the
file; records concatenated user by user, the last 10,000 kept and split in list order
8,000 / 1,000 / 1,000. Few-shot training sets are ``default_rng(seed).permutation(8000)[:n]``
(what ``datasets``' ``shuffle(seed).select(range(n))`` draws). The splits' fingerprints are those
of TALLRec's published files (checked in the tests).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields
from typing import NamedTuple

import numpy as np

from peftrec.data.bookcrossing import RECORDS_NAME
from peftrec.data.errors import DataError
from peftrec.data.tables import Interactions, RecDataset

HISTORY = 10
KEPT = 10_000
SPLIT_SIZES = (8_000, 1_000, 1_000)
SHOTS = (16, 64, 256)
LIKED_ABOVE = 3.0
BOOK_LIKED_ABOVE = 5.0  # tallrec-book: a rating above 5 of 10 (0: implicit, a dislike)


@dataclass
class PreferenceRecords:
    """Aligned arrays, one row per record (indices into the dataset's users and items)."""

    users: np.ndarray
    items: np.ndarray
    """(n,) the target item."""
    labels: np.ndarray
    """(n,) int64: 1 when the user rated the target above 3."""
    history_items: np.ndarray
    """(n, 10) the user's ten previous items, oldest first."""
    history_labels: np.ndarray
    """(n, 10) their labels."""
    rows: np.ndarray
    """(n,) the target's row in the dataset's interactions."""
    history_mask: np.ndarray | None = None
    """(n, 10) bool: which history positions hold an event (None: all; a shorter history is
    padded at the end with item 0, label 0)."""

    def __post_init__(self) -> None:
        if self.history_mask is None:
            self.history_mask = np.ones(self.history_items.shape, dtype=bool)

    @property
    def padded(self) -> bool:
        """Whether some history is shorter than the others (a mask must be read)."""
        return not bool(self.history_mask.all())

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: np.ndarray) -> PreferenceRecords:
        return PreferenceRecords(*(getattr(self, f.name)[index] for f in fields(self)))


class PreferenceSplit(NamedTuple):
    train: PreferenceRecords
    valid: PreferenceRecords
    test: PreferenceRecords


def preference_records(dataset: RecDataset, history: int = HISTORY) -> PreferenceRecords:
    """Every record of every user (users in order of first appearance), before the last-10,000
    cut."""
    inter = dataset.interactions
    if inter.timestamps is None:
        raise DataError(f"{dataset.name}: preference records need timestamps to order a history")
    rows = np.arange(len(inter))
    # users in order of their first row; within a user, rows by (timestamp, row)
    first_row = np.full(len(dataset.user_ids), len(inter))
    np.minimum.at(first_row, inter.users, rows)
    order = np.lexsort((rows, inter.timestamps, first_row[inter.users]))
    users, items = inter.users[order], inter.items[order]
    labels = (inter.ratings[order] > LIKED_ABOVE).astype(np.int64)
    starts = np.flatnonzero(np.diff(users, prepend=-1))
    targets = np.concatenate(
        [np.arange(s + history, e) for s, e in zip(starts, [*starts[1:], len(users)], strict=True)]
    ).astype(np.int64)
    window = targets[:, None] - np.arange(history, 0, -1)[None, :]
    return PreferenceRecords(
        users=users[targets],
        items=items[targets],
        labels=labels[targets],
        history_items=items[window],
        history_labels=labels[window],
        rows=order[targets],
    )


def tallrec_split(dataset: RecDataset) -> PreferenceSplit:
    """Protocol ``tallrec-movie``: the last 10,000 records, 8,000 / 1,000 / 1,000 in list order."""
    records = preference_records(dataset)
    if len(records) < KEPT:
        raise DataError(
            f"{dataset.name}: {len(records)} preference records; tallrec-movie needs {KEPT}"
        )
    kept = records.subset(np.arange(len(records) - KEPT, len(records)))
    a, b = SPLIT_SIZES[0], SPLIT_SIZES[0] + SPLIT_SIZES[1]
    return PreferenceSplit(
        kept.subset(np.arange(a)), kept.subset(np.arange(a, b)), kept.subset(np.arange(b, KEPT))
    )


def few_shot(train: PreferenceRecords, n: int, seed: int) -> PreferenceRecords:
    """The ``n`` training records of a few-shot run: ``default_rng(seed).permutation``'s first n."""
    if not 0 < n <= len(train):
        raise ValueError(f"few_shot: n must be in 1..{len(train)}, got {n}")
    return train.subset(np.random.default_rng(seed).permutation(len(train))[:n])


def records_fingerprint(records: PreferenceRecords, dataset: RecDataset) -> str:
    """First 12 hex of the md5 of the lines ``f"{user},{item}\\n"`` in list order."""
    lines = "".join(
        f"{dataset.user_ids[u]},{dataset.item_ids[i]}\n"
        for u, i in zip(records.users, records.items, strict=True)
    )
    return hashlib.md5(lines.encode()).hexdigest()[:12]


def like_ratio(records: PreferenceRecords) -> np.ndarray:
    """The no-training reference: the share of liked items among those in the history."""
    if not records.padded:
        return records.history_labels.mean(axis=1)
    mask = records.history_mask
    return (records.history_labels * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1)


def source_records(dataset: RecDataset) -> PreferenceRecords:
    """tallrec-movie's source domain: every record before the benchmark's last 10,000, i.e. the
    records whose targets are the ratings no benchmark record targets."""
    records = preference_records(dataset)
    if len(records) <= KEPT:
        raise DataError(f"{dataset.name}: no preference records before the benchmark's {KEPT}")
    return records.subset(np.arange(len(records) - KEPT))


def p3_preference_split(dataset: RecDataset) -> PreferenceSplit:
    """Protocol p3 with labels: P3's leave-one-out by time, one record per target with its ten
    previous rows. A user's last record (their last row) is test, the one before validation,
    the rest train; the test record's history holds the validation row."""
    records = preference_records(dataset)
    users = records.users
    last = np.r_[users[1:] != users[:-1], True]  # records are grouped by user, in time order
    before_last = np.r_[last[1:], False] & ~last
    test, valid = np.flatnonzero(last), np.flatnonzero(before_last)
    train = np.flatnonzero(~(last | before_last))
    if not (len(train) and len(valid)):
        raise DataError(
            f"{dataset.name}: p3 preference records need users with at least {HISTORY + 3} rows"
        )
    return PreferenceSplit(records.subset(train), records.subset(valid), records.subset(test))


def liked_above(protocol: str) -> float:
    """The rating above which a protocol's label is a like."""
    return BOOK_LIKED_ABOVE if protocol == "tallrec-book" else LIKED_ABOVE


def tallrec_book_split(dataset: RecDataset) -> PreferenceSplit:
    """Protocol ``tallrec-book`` on :func:`~peftrec.data.bookcrossing.tallrec_book_dataset`: its
    rows are one record per user, user after user (history events, then the target), users in
    split order; the first ``int(0.8 n)`` users' records train, the next ``int(0.9 n)`` validate,
    the rest test. Labels: rating > 5 (implicit zeros are dislikes)."""
    if dataset.name != RECORDS_NAME:
        raise DataError(
            f"protocol tallrec-book reads Book-Crossing's records (data.dataset=book-crossing), "
            f"not {dataset.name!r}"
        )
    inter = dataset.interactions
    ends = np.flatnonzero(np.r_[inter.users[1:] != inter.users[:-1], True])
    starts = np.r_[0, ends[:-1] + 1]
    n = len(ends)
    lengths = np.minimum(ends - starts, HISTORY)
    window = starts[:, None] + np.arange(HISTORY)[None, :]
    mask = np.arange(HISTORY)[None, :] < lengths[:, None]
    labels = (inter.ratings > BOOK_LIKED_ABOVE).astype(np.int64)
    window = np.where(mask, window, 0)
    records = PreferenceRecords(
        users=inter.users[ends],
        items=inter.items[ends],
        labels=labels[ends],
        history_items=np.where(mask, inter.items[window], 0),
        history_labels=np.where(mask, labels[window], 0),
        rows=ends.astype(np.int64),
        history_mask=mask,
    )
    a, b = int(0.8 * n), int(0.9 * n)
    return PreferenceSplit(
        records.subset(np.arange(a)),
        records.subset(np.arange(a, b)),
        records.subset(np.arange(b, n)),
    )


def run_records(dataset: RecDataset, protocol: str, records: str, n: int | None, seed: int):
    """A preference run's (train, valid, test) records: the protocol's split, with the source
    domain's records to train on (``records="source"``), or ``n`` of the training records
    (few-shot)."""
    if protocol == "tallrec-movie":
        split = tallrec_split(dataset)
    elif protocol == "tallrec-book":
        split = tallrec_book_split(dataset)
    elif protocol == "p3":
        split = p3_preference_split(dataset)
    else:
        raise DataError(
            "preference records: protocol must be tallrec-movie, tallrec-book or p3, "
            f"not {protocol}"
        )
    train = source_records(dataset) if records == "source" else split.train
    if n is not None:
        if n > len(train):
            raise DataError(
                f"data.train_records={n}, but protocol {protocol} has {len(train)} training records"
            )
        train = few_shot(train, n, seed)
    return PreferenceSplit(train, split.valid, split.test)


def compact(dataset: RecDataset, split: PreferenceSplit) -> tuple[RecDataset, PreferenceSplit]:
    """The dataset cut to the records' users, their rows and the items those name, with the
    records renumbered: a run encodes only the items it reads (tallrec-book: 91,617 books in all,
    about a third of them in a few-shot run)."""
    parts = list(split)
    users = np.unique(np.concatenate([p.users for p in parts]))
    rows = np.flatnonzero(np.isin(dataset.interactions.users, users))
    inter = dataset.interactions.subset(rows)
    items = np.unique(
        np.concatenate(
            [
                inter.items,
                *(p.items for p in parts),
                *(p.history_items[p.history_mask] for p in parts),
            ]
        )
    )
    new_user = np.full(len(dataset.user_ids), -1, dtype=np.int64)
    new_user[users] = np.arange(len(users))
    new_item = np.full(len(dataset.item_ids), -1, dtype=np.int64)
    new_item[items] = np.arange(len(items))
    new_row = np.full(len(dataset.interactions), -1, dtype=np.int64)
    new_row[rows] = np.arange(len(rows))
    small = RecDataset(
        name=dataset.name,
        user_ids=[dataset.user_ids[u] for u in users],
        item_ids=[dataset.item_ids[i] for i in items],
        item_fields={f: [v[i] for i in items] for f, v in dataset.item_fields.items()},
        user_fields={f: [v[u] for u in users] for f, v in dataset.user_fields.items()},
        interactions=Interactions(
            new_user[inter.users], new_item[inter.items], inter.ratings, inter.timestamps
        ),
    )
    renumbered = [
        PreferenceRecords(
            users=new_user[p.users],
            items=new_item[p.items],
            labels=p.labels,
            history_items=np.where(p.history_mask, new_item[p.history_items], 0),
            history_labels=p.history_labels,
            rows=new_row[p.rows],
            history_mask=p.history_mask,
        )
        for p in parts
    ]
    return small, PreferenceSplit(*renumbered)
