"""Protocol p4's time blocks: fingerprints on the real ml-100k, checked against the rule applied
from scratch to the raw ratings file, and the rule on a toy table."""

from __future__ import annotations

import hashlib
import itertools

import numpy as np
import pytest

from peftrec.data import DataError, Interactions, RecDataset, fingerprint
from peftrec.data.blocks import time_blocks

from .test_data_ml100k import ml100k  # noqa: F401 (the real data, or a skip)

P4 = [  # (train, held-out share) per block B1..B5
    ("18000:60b5e3ee5505", "2000:258abfb6332a"),
    ("18000:446aad724109", "2000:793e83237a23"),
    ("18000:8ac59b17ccf1", "2000:cebd1650bb99"),
    ("18000:215250d36346", "2000:f5f6d69122d0"),
    ("18000:1a147876a8fe", "2000:a3fdc0f8cd6f"),
]


def test_p4_fingerprints(ml100k):  # noqa: F811
    blocks = time_blocks(ml100k)
    assert [(fingerprint(b.train), fingerprint(b.held)) for b in blocks] == P4
    # the rule from scratch: sort (timestamp, row) pairs, cut, permute each block with its number
    times = ml100k.interactions.timestamps
    order = np.array(sorted(range(len(times)), key=lambda r: (times[r], r)), dtype=np.int64)
    for k, block in enumerate(blocks, start=1):
        rows = order[(k - 1) * 20_000 : k * 20_000]
        held = np.sort(np.random.default_rng(k).permutation(rows)[:2000])
        digest = hashlib.md5(held.astype(np.int64).tobytes()).hexdigest()[:12]
        assert fingerprint(block.held) == f"2000:{digest}"
        assert np.array_equal(block.rows, np.sort(rows))
    assert times[blocks[0].rows].max() <= times[blocks[1].rows].min()  # blocks follow in time


def test_blocks_partition_in_time_order_and_refuse_too_little_data():
    rng = np.random.default_rng(0)
    n = 50
    dataset = RecDataset(
        name="toy",
        user_ids=["a", "b"],
        item_ids=["x", "y", "z"],
        item_fields={},
        user_fields={},
        interactions=Interactions(
            rng.integers(0, 2, n), rng.integers(0, 3, n), np.ones(n), rng.integers(0, 9, n) * 1.0
        ),
    )
    blocks = time_blocks(dataset, blocks=4, size=10, held_share=0.2)
    rows = np.concatenate([b.rows for b in blocks])
    assert len(set(rows.tolist())) == 40 and all(len(b.held) == 2 for b in blocks)
    times = dataset.interactions.timestamps
    for early, late in itertools.pairwise(blocks):
        assert times[early.rows].max() <= times[late.rows].min()
    with pytest.raises(DataError, match="need 60 ratings; dataset 'toy' has 50"):
        time_blocks(dataset, blocks=6, size=10)


def test_p4_update_steps_train_test_and_forgetting_rows(ml100k):  # noqa: F811
    from peftrec.data.blocks import earlier_held, p4_split

    blocks = time_blocks(ml100k)
    full = p4_split(ml100k, 3, "all")
    assert len(full.train) == 54_000 and np.array_equal(full.valid, blocks[2].held)
    assert np.array_equal(full.test, blocks[3].rows)
    new = p4_split(ml100k, 3, "new")
    assert np.array_equal(new.train, blocks[2].train)
    replayed = p4_split(ml100k, 3, "new", replay=0.25)
    past = np.setdiff1d(replayed.train, blocks[2].train)
    assert 0.2 < len(past) / 36_000 < 0.3 and np.isin(past, full.train).all()
    held = earlier_held(ml100k, 3)
    assert len(held) == 4000 and not np.isin(held, full.train).any()
    with pytest.raises(DataError, match=r"data.block must be 1..4, got 5"):
        p4_split(ml100k, 5)


P4_RANKING = [  # (validation, test) targets per update step t = 1..4: each user's first row
    ("206:d0f005854e8d", "252:ff3c651dbd2b"),
    ("227:8cd27fab4377", "267:bfb326374195"),
    ("239:4e46ccc611e6", "279:bfdc45ce9841"),
    ("233:43dc32a1160f", "301:d7bc5d9ee0cb"),
]


def test_p4_ranking_targets_are_each_users_first_row_of_the_block(ml100k):  # noqa: F811
    from peftrec.data.blocks import p4_history, p4_ranking_split, p4_split

    blocks = time_blocks(ml100k)
    inter = ml100k.interactions
    got = [p4_ranking_split(ml100k, t) for t in (1, 2, 3, 4)]
    assert [(fingerprint(s.valid), fingerprint(s.test)) for s in got] == P4_RANKING
    split = got[1]  # t = 2: the same training rows as the rating protocol's
    assert np.array_equal(split.train, p4_split(ml100k, 2).train)
    following = blocks[2].rows
    assert np.isin(split.test, following).all() and np.isin(split.valid, blocks[1].held).all()
    users = inter.users[split.test]
    assert len(set(users.tolist())) == len(users) == len(set(inter.users[following].tolist()))
    for row in split.test[:40]:  # none of the user's rows of the block comes before the target
        theirs = following[inter.users[following] == inter.users[row]]
        earlier = inter.timestamps[theirs] < inter.timestamps[row]
        tied_before = (inter.timestamps[theirs] == inter.timestamps[row]) & (theirs < row)
        assert not (earlier | tied_before).any()
    learned, before = p4_history(ml100k, 2)
    assert np.array_equal(learned, p4_split(ml100k, 2, "all").train)
    assert np.array_equal(before, np.sort(np.concatenate([blocks[0].rows, blocks[1].rows])))


def test_first_per_user_takes_the_earliest_row_ties_in_file_order():
    from peftrec.data.blocks import first_per_user

    dataset = RecDataset(
        name="toy",
        user_ids=["a", "b"],
        item_ids=["x", "y", "z"],
        item_fields={},
        user_fields={},
        interactions=Interactions(
            [0, 1, 0, 0, 1], [0, 1, 2, 1, 0], np.ones(5), [5.0, 3.0, 2.0, 2.0, 3.0]
        ),
    )
    assert first_per_user(dataset, np.arange(5)).tolist() == [1, 2]  # b: row 1 ties row 4
    assert first_per_user(dataset, np.array([0, 3, 4])).tolist() == [3, 4]


def test_a_targets_history_is_its_users_earlier_rows_of_the_pool_oldest_first():
    from peftrec.data.blocks import histories_before

    dataset = RecDataset(
        name="toy",
        user_ids=["a", "b", "c"],
        item_ids=["x", "y", "z", "w"],
        item_fields={},
        user_fields={},
        interactions=Interactions(  # rows 0..5
            [0, 0, 1, 0, 0, 2], [2, 0, 1, 3, 1, 0], np.ones(6), [5.0, 3.0, 1.0, 3.0, 9.0, 1.0]
        ),
    )
    pool = np.array([0, 1, 2, 3])  # row 4 (a's latest) is not in the pool
    histories = histories_before(dataset, pool, np.array([4, 3, 2, 5]))
    # a at t=9 reads x (t=3, row 1), w (t=3, row 3: ties in file order), z (t=5)
    assert [h.tolist() for h in histories] == [[0, 3, 2], [0], [], []]
