"""The approximate item index: it finds what exact scoring finds (all lists scanned: the same top;
calibrated: the recall asked for), folds the item bias in, takes new and changed items, survives
saving, and serves the app's recommendations when asked to."""

from __future__ import annotations

import numpy as np
import pytest

from peftrec.app.index import INDEX_FILE, IndexSettings, ItemIndex
from peftrec.app.recommender import Recommender

from .test_recommender import saved  # noqa: F401 (a fixture)

pytest.importorskip("faiss")

N, DIM = 3000, 8


def catalogue(seed: int = 0, n: int = N):
    """Items in a few clusters, with biases big enough to change the order."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(12, DIM))
    vectors = centres[rng.integers(0, 12, n)] + 0.3 * rng.normal(size=(n, DIM))
    users = rng.normal(size=(200, DIM)).astype(np.float32)
    return vectors.astype(np.float32), rng.normal(size=n).astype(np.float32), users


def exact_top(users, vectors, biases, k=10):
    scores = users @ vectors.T + biases
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def same(got, expected) -> None:
    """The same items in the same order, with the same scores (float32 rounding aside)."""
    assert [[i for i, _ in top] for top in got] == [[i for i, _ in top] for top in expected]
    np.testing.assert_allclose(
        [[s for _, s in top] for top in got], [[s for _, s in top] for top in expected], atol=1e-5
    )


def recall(found, exact) -> float:
    return np.mean([len(np.intersect1d(f, e)) / len(e) for f, e in zip(found, exact, strict=True)])


def test_scanning_every_list_finds_the_exact_top_with_the_bias_folded_in():
    vectors, biases, users = catalogue()
    index = ItemIndex.build(vectors, biases, users, IndexSettings(above=1, recall=0.5))
    index.probes = index.lists
    found = index.search(users, 10)
    assert (found == exact_top(users, vectors, biases)).all()
    # without the bias the order differs: the index is not ranking by <p, q> alone
    assert recall(found, exact_top(users, vectors, np.zeros_like(biases))) < 0.9


@pytest.mark.parametrize("asked", [0.8, 0.99])
def test_probes_are_calibrated_to_the_recall_asked_for(asked):
    vectors, biases, users = catalogue()
    index = ItemIndex.build(vectors, biases, users[:100], IndexSettings(above=1, recall=asked))
    assert 1 <= index.probes <= index.lists
    held_out = recall(index.search(users[100:], 10), exact_top(users[100:], vectors, biases))
    assert held_out >= asked - 0.08  # other users than the calibration's
    if index.probes > 1:  # half the probes would not have been enough on the sample
        index.probes //= 2
        sample = recall(index.search(users[:100], 10), exact_top(users[:100], vectors, biases))
        assert sample < asked


def test_new_and_changed_items_are_found_where_they_now_belong():
    vectors, biases, users = catalogue()
    index = ItemIndex.build(vectors, biases, users, IndexSettings(above=1))
    index.probes = index.lists
    best = users[0] / np.linalg.norm(users[0]) * 50  # scores above every other item for user 0
    # a new item (the next row) and a known one moved next to it
    grown = np.vstack([vectors, best[None]]).astype(np.float32)
    grown_b = np.append(biases, 0.0).astype(np.float32)
    grown[7], grown_b[7] = best * 0.9, 0.0
    index.put(np.array([7, N]), grown[[7, N]], grown_b[[7, N]])
    assert index.size == N + 1
    found = index.search(users, 10)
    assert list(found[0][:2]) == [N, 7]
    assert (found == exact_top(users, grown, grown_b)).all()  # nothing indexed twice
    with pytest.raises(ValueError, match="must all be added"):
        index.put(np.array([N + 5]), grown[:1], grown_b[:1])  # a gap in the rows
    with pytest.raises(ValueError, match="must all be added"):  # refused: item 7 stays put
        index.put(np.array([7, N + 5]), grown[:2], grown_b[:2])
    assert (index.search(users, 10) == found).all()


def test_saved_centroids_give_the_same_index_and_bad_files_are_refused(tmp_path):
    vectors, biases, users = catalogue()
    index = ItemIndex.build(vectors, biases, users, IndexSettings(above=5, recall=0.9))
    index.save(tmp_path)
    again = ItemIndex.load(tmp_path / INDEX_FILE, vectors, biases)
    assert (again.lists, again.probes, again.settings) == (
        index.lists,
        index.probes,
        index.settings,
    )
    assert (again.search(users, 10) == index.search(users, 10)).all()
    with pytest.raises(ValueError, match="do not fit item vectors"):
        ItemIndex.load(tmp_path / INDEX_FILE, vectors[:, :4], biases)
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a peftrec item index"):
        ItemIndex.load(tmp_path / "bad.safetensors", vectors, biases)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"above": 0}, "above must be a positive integer"),
        ({"above": True}, "above must be a positive integer"),
        ({"recall": 1.5}, "recall must be in"),
        ({"lists": 0}, "lists must be a positive integer"),
    ],
)
def test_bad_settings_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        IndexSettings(**settings)


def test_the_app_serves_through_the_index_and_keeps_it_through_writes_and_saves(
    saved,  # noqa: F811
    tmp_path,
):
    folder, _, _ = saved
    exact = Recommender.from_pretrained(folder)
    rec = Recommender.from_pretrained(folder)
    rec.use_index(above=10_000)  # smaller catalogue: nothing built, exact
    assert rec.index is None
    rec.use_index(above=1, recall=1.0, lists=3)
    assert rec.index is not None and rec.index.size == len(rec.item_ids)
    users = rec.user_ids
    same(rec.recommend_batch(users, k=4), exact.recommend_batch(users, k=4))
    # a new item enters the index as it is written, and an item whose text changed moves
    for app in (rec, exact):
        app.add_items({"new": "good movie new drama", "i3": "bad movie changed drama"})
    assert rec.index.size == len(rec.item_ids)
    same(rec.recommend_batch(users, k=4), exact.recommend_batch(users, k=4))
    same(
        [rec.recommend(users[0], k=3, exclude_seen=False)],
        [exact.recommend(users[0], k=3, exclude_seen=False)],
    )
    # one list scanned holds fewer than k items: the users are scored exactly
    probes, everything = rec.index.probes, len(rec.item_ids)
    rec.index.probes = 1
    same(
        rec.recommend_batch(users[2:], k=everything), exact.recommend_batch(users[2:], k=everything)
    )
    rec.index.probes = probes
    # saved with the model: loading reads it, exact=True ignores it
    rec.save_pretrained(tmp_path / "indexed")
    assert (tmp_path / "indexed" / INDEX_FILE).is_file()
    loaded = Recommender.from_pretrained(tmp_path / "indexed")
    assert loaded.index is not None and loaded.index.probes == rec.index.probes
    same(loaded.recommend_batch(users, k=4), exact.recommend_batch(users, k=4))
    assert Recommender.from_pretrained(tmp_path / "indexed", exact=True).index is None
