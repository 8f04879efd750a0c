"""The p1/p2/p3/p2u split rules on small synthetic data (the published fingerprints are checked on
the real ml-100k in test_data_ml100k.py)."""

import hashlib

import numpy as np
import pytest

from peftrec.data import DataError, Interactions, RecDataset, check_splits, fingerprint, split_rows


def _dataset(users, items, timestamps=None, item_ids=None):
    users, items = np.asarray(users), np.asarray(items)
    return RecDataset(
        name="toy",
        user_ids=[str(u) for u in range(users.max() + 1)],
        item_ids=item_ids or [str(i) for i in range(items.max() + 1)],
        item_fields={},
        user_fields={},
        interactions=Interactions(users, items, np.ones(len(users)), timestamps),
    )


def _random(n=1000, n_users=30, n_items=50, seed=1):
    rng = np.random.default_rng(seed)
    return _dataset(
        rng.integers(0, n_users, n), rng.integers(0, n_items, n), rng.integers(0, 100, n) * 1.0
    )


@pytest.mark.parametrize("protocol", ["p1", "p2", "p3", "p2u"])
def test_splits_partition_the_rows(protocol):
    split = split_rows(_random(), protocol)
    parts = np.concatenate([split.train, split.valid, split.test])
    assert np.array_equal(np.sort(parts), np.arange(1000))
    for part in (split.train, split.valid, split.test):
        assert part.dtype == np.int64 and np.all(np.diff(part) > 0)


def test_p1_is_the_seeded_permutation():
    split = split_rows(_random(), "p1", seed=3)
    perm = np.random.default_rng(3).permutation(1000)
    assert np.array_equal(split.test, np.sort(perm[900:]))
    assert len(split.train) == 800 and len(split.valid) == 100


def test_p2_holds_out_whole_items():
    ds = _random()
    split = split_rows(ds, "p2")
    items = ds.interactions.items
    train, valid, test = (set(items[part].tolist()) for part in split)
    assert not train & valid and not train & test and not valid & test
    assert (len(test), len(valid)) == (10, 5)  # 20% and 10% of 50 rated items


def test_p2u_holds_out_whole_users():
    ds = _random()
    split = split_rows(ds, "p2u", seed=2)
    users = ds.interactions.users
    train, valid, test = (set(users[part].tolist()) for part in split)
    assert not train & valid and not train & test and not valid & test
    assert (len(test), len(valid)) == (6, 3)  # 20% and 10% of 30 users
    order = np.random.default_rng(2).permutation(np.arange(30))  # ids "0".."29" sort numerically
    assert test == set(order[:6].tolist()) and valid == set(order[6:9].tolist())


def test_p2u_needs_ten_users():
    ds = _dataset([0, 1, 2, 3, 4] * 3, list(range(15)))
    split = split_rows(ds, "p2u")
    assert (
        len(split.valid) == 0
    )  # 5 users: 1 test user, 5 * 3 // 10 = 1 held, so no validation user
    with pytest.raises(
        DataError, match=r"protocol p2u leaves no valid ratings; p2u holds out .* at least 10"
    ):
        check_splits(ds, "p2u", {"train": split.train, "valid": split.valid, "test": split.test})


def test_p2_sorts_integer_ids_numerically_else_lexicographically():
    ids = ["10", "9", "100", "1", "2"]
    ds = _dataset([0] * 5, [0, 1, 2, 3, 4], item_ids=ids)
    order = np.random.default_rng(0).permutation(np.array(["1", "2", "9", "10", "100"]))
    assert [ids[i] for i in ds.interactions.items[split_rows(ds, "p2").test]] == [order[0]]
    ids = ["b", "a10", "a9", "c", "a1"]
    ds = _dataset([0] * 5, [0, 1, 2, 3, 4], item_ids=ids)
    order = np.random.default_rng(0).permutation(np.array(sorted(ids)))
    assert [ids[i] for i in ds.interactions.items[split_rows(ds, "p2").test]] == [order[0]]


def test_p3_leaves_last_two_by_time_and_row_and_keeps_short_users_in_train():
    #        rows:  0  1  2  3  4  5  6  7
    users = np.array([0, 0, 0, 0, 1, 1, 2, 0])
    times = np.array([5, 1, 9, 9, 3, 4, 1, 2.0])
    split = split_rows(_dataset(users, np.arange(8), times), "p3")
    # user 0 by (time, row): 1, 7, 0, 2, 3 -> test 3 (ties broken by row), valid 2
    assert split.test.tolist() == [3] and split.valid.tolist() == [2]
    assert split.train.tolist() == [0, 1, 4, 5, 6, 7]


def test_p3_needs_timestamps_and_protocol_names_are_checked():
    ds = _dataset([0, 0, 0], [0, 1, 2])
    with pytest.raises(DataError, match=r"p3.*timestamps"):
        split_rows(ds, "p3")
    with pytest.raises(DataError, match="unknown protocol 'P1'"):
        split_rows(ds, "P1")


def test_fingerprint_sorts_and_formats():
    rows = np.array([3, 1, 2])
    md5 = hashlib.md5(np.array([1, 2, 3], dtype=np.int64).tobytes()).hexdigest()[:12]
    assert fingerprint(rows) == f"3:{md5}" == fingerprint([1, 2, 3])
