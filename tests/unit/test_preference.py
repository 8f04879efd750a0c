"""Protocol tallrec-movie rebuilt exactly (TALLRec's published split fingerprints), its few-shot
draws, the like-ratio reference, and the preference metrics (AUC, LogLoss, GAUC)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from peftrec.data import Interactions, RecDataset
from peftrec.data.preference import (
    few_shot,
    like_ratio,
    preference_records,
    records_fingerprint,
    tallrec_split,
)
from peftrec.metrics import load_metric

from .test_data_ml100k import ml100k  # noqa: F401 (the real data, or a skip)

TALLREC = {"train": "6a562d723740", "valid": "bef7332aafc2", "test": "ede27b5e5109"}


def test_the_split_is_tallrecs_own(ml100k):  # noqa: F811
    split = tallrec_split(ml100k)
    assert [len(part) for part in split] == [8000, 1000, 1000]
    found = {name: records_fingerprint(part, ml100k) for name, part in split._asdict().items()}
    assert found == TALLREC
    test = split.test
    assert len(set(test.users.tolist())) == 16
    # the no-training reference the issue quotes: the share of liked history items
    reference = load_metric("preference").compute(
        predictions=like_ratio(test), references=test.labels
    )
    assert reference["auc"] == pytest.approx(0.726, abs=5e-4)


def test_few_shot_draws_are_the_seeded_permutation(ml100k):  # noqa: F811
    train = tallrec_split(ml100k).train
    drawn = few_shot(train, 16, seed=3)
    expected = np.random.default_rng(3).permutation(8000)[:16]
    assert np.array_equal(drawn.rows, train.rows[expected])
    assert np.array_equal(few_shot(train, 64, 3).rows[:16], drawn.rows)  # nested draws
    with pytest.raises(ValueError, match=r"n must be in 1\.\.8000"):
        few_shot(train, 0, 0)


def test_records_hold_the_ten_items_before_the_target_in_time_order():
    # user 0: rows given out of time order, a tie at t=5 (file order decides); user 1 first
    users = [*[1] * 11, *[0] * 12]
    times = [*range(11), 5, 3, 1, 5, 0, 2, 4, 6, 7, 8, 9, 10]
    items = [*range(11), *range(100, 112)]
    ratings = [*[5.0] * 11, 1, 2, 3, 4, 5, 4, 3, 2, 1, 5, 4, 3]
    dataset = RecDataset(
        name="toy",
        user_ids=["a", "b"],
        item_ids=[str(i) for i in range(112)],
        item_fields={},
        user_fields={},
        interactions=Interactions(users, items, ratings, np.array(times, dtype=float)),
    )
    records = preference_records(dataset)
    assert records.users.tolist() == [1, 0, 0]  # user 1 appears first in the file
    # user 0 in time order: t0 104, t1 102, t2 105, t3 101, t4 106, t5 100 then 103 (file order)
    order0 = [104, 102, 105, 101, 106, 100, 103, 107, 108, 109, 110, 111]
    assert records.history_items[1].tolist() == order0[:10] and records.items[1] == order0[10]
    assert records.items[2] == order0[11]
    label = {i: int(r > 3) for i, r in zip(items, ratings, strict=True)}
    assert records.history_labels[1].tolist() == [label[i] for i in order0[:10]]
    assert records.labels.tolist() == [1, label[order0[10]], label[order0[11]]]


def test_auc_counts_ordered_pairs_and_ties_half():
    rng = np.random.default_rng(0)
    p = rng.integers(0, 5, 60) / 4  # many ties
    y = rng.integers(0, 2, 60)
    pairs = [
        1.0 if p[i] > p[j] else 0.5 if p[i] == p[j] else 0.0
        for i, j in itertools.product(np.flatnonzero(y == 1), np.flatnonzero(y == 0))
    ]
    groups = rng.integers(0, 4, 60)
    out = load_metric("preference").compute(predictions=p, references=y, groups=groups)
    assert out["auc"] == pytest.approx(np.mean(pairs))
    clipped = np.clip(p, 1e-7, 1 - 1e-7)
    assert out["logloss"] == pytest.approx(
        -np.mean(y * np.log(clipped) + (1 - y) * np.log(1 - clipped))
    )
    per_group = []
    for g in range(4):
        m = groups == g
        sub = load_metric("preference").compute(predictions=p[m], references=y[m])
        per_group.append((sub["auc"], m.sum()))
    expected = sum(a * n for a, n in per_group) / sum(n for _, n in per_group)
    assert out["gauc"] == pytest.approx(expected) and out["gauc_users"] == 4


def test_preference_metric_refuses_bad_input():
    metric = load_metric("preference")
    with pytest.raises(ValueError, match="probabilities"):
        metric.compute(predictions=[1.5, 0.2], references=[1, 0])
    with pytest.raises(ValueError, match="0 or 1"):
        metric.compute(predictions=[0.5, 0.2], references=[2, 0])
    assert np.isnan(metric.compute(predictions=[0.5, 0.2], references=[1, 1])["auc"])
