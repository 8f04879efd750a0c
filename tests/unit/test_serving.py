"""Serving from saved vectors: no torch or language model for known users and items, the network
loaded once when a text must be encoded, and vectors that no longer match their folder refused."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from peftrec.app.recommender import Recommender
from peftrec.artifact.vectors import SERVING_FILE, ServingVectors, folder_digest

from .test_recommender import save, trained


@pytest.fixture
def folder(tmp_path, tiny_bert):
    model, tokenizer = trained(tiny_bert)
    return save(tmp_path / "model", model, tokenizer, tiny_bert)


def run_fresh(code: str) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON line."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_known_users_are_served_without_torch_and_the_network_loads_for_new_text(folder):
    out = run_fresh(
        f"""
        import json, sys
        from peftrec import Recommender
        rec = Recommender.from_pretrained({str(folder)!r})
        top = rec.recommend("u0", k=3)
        scores = rec.predict(["u0", "u1"], ["i1", "i2"]).tolist()
        before = sorted(m for m in ("torch", "transformers", "peft") if m in sys.modules)
        rec.add_items({{"new": "good movie 9 comedy"}})
        after = sorted(m for m in ("torch", "transformers", "peft") if m in sys.modules)
        print(json.dumps({{"top": top, "scores": scores, "before": before, "after": after,
                           "new": rec.predict(["u0"], ["new"]).tolist()}}))
        """
    )
    assert out["before"] == [] and out["after"] == ["peft", "torch", "transformers"]
    network = Recommender.from_pretrained(folder)
    network.engine  # noqa: B018 (the network, loaded)
    assert [list(t) for t in network.recommend("u0", k=3)] == out["top"]
    np.testing.assert_allclose(network.predict(["u0", "u1"], ["i1", "i2"]), out["scores"])
    np.testing.assert_allclose(
        network.predict_texts("u0", ["good movie 9 comedy"]), out["new"], rtol=1e-5
    )


def test_vectors_that_no_longer_match_the_folder_are_not_served(folder, tmp_path, caplog):
    changed = tmp_path / "changed"
    shutil.copytree(folder, changed)
    catalog = json.loads((changed / "catalog.json").read_text())
    catalog["item_texts"][1] = "bad film horror"  # edited by hand after saving
    (changed / "catalog.json").write_text(json.dumps(catalog))
    with caplog.at_level("WARNING", logger="peftrec.app.recommender"):
        rec = Recommender.from_pretrained(changed)
    assert "catalogue changed since it was written" in caplog.text and rec.network_loaded
    served = Recommender.from_pretrained(folder)
    scores, old = rec.score_all(["u0"])[0], served.score_all(["u0"])[0]
    assert scores[1] != pytest.approx(old[1])  # scored from the new text
    np.testing.assert_allclose(np.delete(scores, 1), np.delete(old, 1), rtol=1e-5)


def test_a_folder_without_vectors_is_served_by_the_network(folder, tmp_path):
    older = tmp_path / "older"
    shutil.copytree(folder, older)
    (older / SERVING_FILE).unlink()  # saved by a peftrec before serving vectors
    rec = Recommender.from_pretrained(older)
    assert rec.network_loaded
    np.testing.assert_allclose(
        rec.score_all(), Recommender.from_pretrained(folder).score_all(), rtol=1e-5, atol=1e-6
    )
    rec.save_pretrained(older, overwrite=True)  # saving again adds them
    assert (older / SERVING_FILE).is_file()
    assert not Recommender.from_pretrained(older).network_loaded


def test_changes_are_served_at_once_and_saved_with_fresh_vectors(folder, tmp_path):
    rec = Recommender.from_pretrained(folder)
    rec.add_items({"new": "good movie 9 comedy"})
    rec.add_interactions({"u0": ["new"]})
    assert "new" not in {i for i, _ in rec.recommend("u0", k=5)}
    rec.fold_in("fresh", {"i1": 5.0, "new": 4.0})
    saved = rec.save_pretrained(tmp_path / "grown")
    assert folder_digest(saved) != folder_digest(folder)
    again = Recommender.from_pretrained(saved)
    assert not again.network_loaded
    np.testing.assert_allclose(again.score_all(), rec.score_all(), rtol=1e-6)
    assert again.recommend("fresh", k=3) == rec.recommend("fresh", k=3)


def test_serving_vectors_score_like_the_formula():
    rng = np.random.default_rng(0)
    vectors = ServingVectors(
        item_vectors=rng.normal(size=(5, 3)).astype(np.float32),
        item_biases=rng.normal(size=5).astype(np.float32),
        user_vectors=rng.normal(size=(2, 3)).astype(np.float32),
        user_biases=rng.normal(size=2).astype(np.float32),
        offset=3.5,
        link="sigmoid",
    )
    raw = (
        3.5
        + vectors.user_biases[:, None]
        + vectors.item_biases[None, :]
        + vectors.user_vectors @ vectors.item_vectors.T
    )
    np.testing.assert_allclose(vectors.rows(np.arange(2)), 1 / (1 + np.exp(-raw)), rtol=1e-6)
    np.testing.assert_allclose(
        vectors.pairs(np.array([0, 1]), np.array([4, 2])),
        vectors.rows(np.arange(2))[[0, 1], [4, 2]],
    )
    with pytest.raises(ValueError, match="link 'tanh'"):
        ServingVectors(*(np.zeros(1),) * 4, link="tanh")
