"""Writes cost what they change: after each write the served vectors equal a full recompute
(float32 rounding aside), and only the rows a write changes are computed again, for a rating, a
ranking and a sequential model."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from peftrec.app.recommender import Recommender
from peftrec.artifact.head_vectors import trained_vectors
from peftrec.artifact.save import Catalog, save_artifact

from .test_cold_users import PROFILES, build
from .test_model import NUM_ITEMS, TEXTS
from .test_recommender import CATALOG, ITEMS, save
from .test_sequential import model_for

SCALED = dataclasses.replace(CATALOG, rating_scale=(1.0, 5.0))
HISTORIES = Catalog(
    user_ids=["s0", "s1", "s2"],
    item_ids=ITEMS,
    item_texts=TEXTS,
    seen_users=np.array([0, 0, 0, 1, 1, 2]),
    seen_items=np.array([2, 5, 7, 3, 2, 9]),
)
WRITES = {
    "rating": [
        ("add_items", {"n1": "good movie new drama", "n2": "bad movie new drama"}),
        ("add_items", {"i3": "good movie changed drama", "n1": "bad movie changed drama"}),
        ("add_interactions", {"u1": ["n1", "i4"], "fresh": ["n2"]}),
        ("fold_in", "u2", {"n1": 4.0, "i5": 2.0}),
        ("fold_in", "cold", {"n2": 5.0, "i1": 1.0}),
        ("add_users", {"cold": PROFILES[1], "newbie": PROFILES[2]}),
        ("add_items", {"n3": "good movie 3 drama"}),
        ("fold_in", "newbie", {"n3": 5.0}),
    ],
    "ranking": [
        ("add_items", {"n1": "good movie new drama", "n2": "bad movie new drama"}),
        ("add_interactions", {"u1": ["n1"], "fresh": ["n2", "i4"]}),
        ("add_items", {"i4": "good movie changed drama", "n2": "bad movie changed drama"}),
        ("add_users", {"fresh": PROFILES[3], "newbie": PROFILES[2]}),
        ("add_interactions", {"newbie": ["n1"], "fresh": ["i6"]}),
        ("add_items", {"n3": "good movie 3 drama"}),
    ],
    "sequential": [
        ("add_items", {"n1": "good movie new drama", "n2": "bad movie new drama"}),
        ("add_interactions", {"s1": ["n1"], "fresh": ["n2", "i4"]}),
        ("add_items", {"i7": "good movie changed drama"}),  # in s0's history only
        ("add_items", {"n2": "bad movie changed drama", "n3": "good movie 3"}),  # fresh's
        ("add_interactions", {"s2": ["n3", "i7"]}),
    ],
}


@pytest.fixture(params=list(WRITES))
def task_folder(request, tmp_path, tiny_bert):
    task = request.param
    if task == "sequential":
        model, tokenizer = model_for(tiny_bert)
        vectors, text = trained_vectors(model, tokenizer, HISTORIES)
        folder = save_artifact(
            tmp_path / task, model, tokenizer, HISTORIES, vectors=vectors, item_text=text
        )
        return task, folder
    model, tokenizer = build(tiny_bert, task=task)
    if task == "rating":
        model.head.global_mean.data.fill_(3.0)
        vectors, text = trained_vectors(model, tokenizer, SCALED)
        folder = save_artifact(
            tmp_path / task, model, tokenizer, SCALED, vectors=vectors, item_text=text
        )
        return task, folder
    return task, save(tmp_path / task, model, tokenizer, tiny_bert)


def recompute(rec: Recommender) -> None:
    """What every write did before the engine kept its tables: every item's vector computed
    again from the pooled texts, and (users who are their histories) every user's state."""
    engine = rec.engine
    engine._item_cache = None
    if not engine.traits.user_table:
        engine._user_cache = None
    rec._changed()


def apply(rec: Recommender, write: tuple) -> None:
    name, *args = write
    getattr(rec, name)(*args)


def assert_same(rec: Recommender, full: Recommender) -> None:
    assert (rec.item_ids, rec.item_texts) == (full.item_ids, full.item_texts)
    assert rec.user_ids == full.user_ids
    assert all(np.array_equal(rec.seen[u], full.seen[u]) for u in range(len(rec.user_ids)))
    text, full_text = rec.engine.item_text_encodings(), full.engine.item_text_encodings()
    np.testing.assert_array_equal(text, full_text)  # rows copied, never computed
    got, want = rec._served(), full._served()
    for name in ("item_vectors", "item_biases", "user_vectors", "user_biases"):
        np.testing.assert_allclose(
            getattr(got, name), getattr(want, name), rtol=1e-5, atol=1e-6, err_msg=name
        )
    np.testing.assert_allclose(rec.score_all(), full.score_all(), rtol=1e-5, atol=1e-5)
    some = rec.user_ids[-1]
    assert [i for i, _ in rec.recommend(some, k=5)] == [i for i, _ in full.recommend(some, k=5)]


def test_each_write_serves_what_a_full_recompute_gives(task_folder):
    task, folder = task_folder
    rec, full = Recommender.from_pretrained(folder), Recommender.from_pretrained(folder)
    for write in WRITES[task]:
        apply(rec, write)
        apply(full, write)
        recompute(full)
        assert_same(rec, full)
    again = Recommender.from_pretrained(folder)  # the same writes from a fresh load at once
    for write in WRITES[task]:
        apply(again, write)
    assert_same(again, full)


def test_a_write_computes_only_the_rows_it_changes(task_folder, monkeypatch):
    task, folder = task_folder
    rec = Recommender.from_pretrained(folder)
    engine = rec.engine
    items, users = [], []
    compute_items, compute_users = engine._compute_items, engine._compute_users
    monkeypatch.setattr(
        engine, "_compute_items", lambda r: items.append(len(r)) or compute_items(r)
    )
    monkeypatch.setattr(
        engine, "_compute_users", lambda r: users.append(len(r)) or compute_users(r)
    )
    before = rec._served().user_vectors.copy()
    rec.add_items({"n1": "good movie new drama"})  # a new item is in no history
    assert (items, users) == ([1], [])
    np.testing.assert_array_equal(rec._served().user_vectors, before)
    assert len(rec._served().item_vectors) == NUM_ITEMS + 1
    items.clear()
    known = rec.user_ids[0]
    rec.add_interactions({known: ["n1"]})
    assert items == [] and users == ([1] if task == "sequential" else [])
    if task == "sequential":  # a changed text moves the states of the histories holding it
        users.clear()
        before = rec._served().user_vectors.copy()
        rec.add_items({"i3": "good movie changed drama"})  # s1's history only
        assert (items, users) == ([1], [1])
        changed = np.flatnonzero((rec._served().user_vectors != before).any(axis=1))
        assert changed.tolist() == [1]


def test_recommend_batch_in_chunks_gives_what_one_by_one_gives(task_folder, monkeypatch):
    from peftrec.app import served

    _, folder = task_folder
    rec = Recommender.from_pretrained(folder)
    users = list(rec.user_ids)
    monkeypatch.setattr(served, "CHUNK_SCORES", 2 * NUM_ITEMS)  # two users per product
    for given in ({}, {"candidates": ["i1", "i4", "i6", "i8", "i9", "i10"]}):
        batch = rec.recommend_batch(users[::-1], k=3, **given)
        for user, top in zip(users[::-1], batch, strict=True):
            alone = rec.recommend(user, k=3, **given)
            assert [i for i, _ in top] == [i for i, _ in alone]
            np.testing.assert_allclose([s for _, s in top], [s for _, s in alone], rtol=1e-6)
