"""Saved artifact round trip, the app API, and loading safely."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from peftrec.app.recommender import Recommender
from peftrec.artifact.head_vectors import trained_vectors
from peftrec.artifact.save import ArtifactError, Catalog, save_artifact
from peftrec.models.tokens import tokenize_texts

from .test_model import CASES, NUM_ITEMS, NUM_USERS, TEXTS, adapter_config, make

USERS = [f"u{k}" for k in range(NUM_USERS)]
ITEMS = [f"i{k}" for k in range(NUM_ITEMS)]


def trained(backbone_path, method="lora", task="rating"):
    """A model whose adapter and head are not at their initial values (so a lost weight shows)."""
    model, tokenizer = make(backbone_path, method, task=task)
    for name, param in model.named_parameters():
        if param.requires_grad:
            torch.nn.init.normal_(
                param,
                std=0.05 if "head." in name else 0.02,
                generator=torch.Generator().manual_seed(len(name)),
            )
    return model, tokenizer


CATALOG = Catalog(
    user_ids=USERS,
    item_ids=ITEMS,
    item_texts=TEXTS,
    seen_users=np.array([0, 0, 1]),
    seen_items=np.array([2, 5, 2]),
)


def save(folder, model, tokenizer, backbone_path, method="lora"):
    vectors, text = trained_vectors(model, tokenizer, CATALOG)
    return save_artifact(
        folder, model, tokenizer, CATALOG, config_yaml="x: 1\n", vectors=vectors, item_text=text
    )


@pytest.fixture
def saved(tmp_path, tiny_bert):
    model, tokenizer = trained(tiny_bert)
    folder = save(tmp_path / "model", model, tokenizer, tiny_bert)
    return folder, model, tokenizer


@pytest.mark.parametrize("task", ["rating", "ranking"])
@pytest.mark.parametrize(("kind", "method"), CASES)
def test_round_trip_gives_identical_predictions(tmp_path, tiny_backbones, kind, method, task):
    model, tokenizer = trained(tiny_backbones[kind], method, task)
    in_memory = Recommender(model, tokenizer, CATALOG, {"max_length": 32})
    folder = save(
        tmp_path / "model", model, tokenizer, tiny_backbones[kind], adapter_config(method).method
    )
    loaded = Recommender.from_pretrained(folder)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [
            "peftrec.json",
            "README.md",
            "head.safetensors",
            "tokenizer",
            "catalog.json",
            "seen.safetensors",
            "config.yaml",
            "serving.safetensors",
        ]
        + (["adapter"] if method != "frozen" else [])
    )
    assert loaded.spec.task == task and loaded.spec.adapter.method == adapter_config(method).method
    np.testing.assert_array_equal(loaded.score_all(), in_memory.score_all())
    assert loaded.recommend("u0", k=3) == in_memory.recommend("u0", k=3)
    # served from the saved vectors, without the network; the network's own scores agree
    assert not loaded.network_loaded
    with torch.no_grad():
        head = model.eval().head
        users = head.users(torch.arange(len(USERS)))
        items = head.items(
            model.encode_texts(tokenize_texts(tokenizer, TEXTS, model.spec.max_length)),
            torch.arange(len(ITEMS)),
        )
        network = head.score_all(users, items).numpy()
    np.testing.assert_allclose(loaded.score_all(), network, rtol=1e-5, atol=1e-5)


def test_predict_recommend_and_errors(saved):
    folder, *_ = saved
    rec = Recommender.from_pretrained(folder)
    scores = rec.score_all(["u0"])[0]
    np.testing.assert_allclose(rec.predict(["u0", "u0"], ["i3", "i7"]), scores[[3, 7]], rtol=1e-6)
    top = rec.recommend("u0", k=NUM_ITEMS - 2)
    assert {"i2", "i5"}.isdisjoint(i for i, _ in top)  # seen in training
    assert [s for _, s in top] == sorted((s for _, s in top), reverse=True)
    assert len(rec.recommend("u0", k=NUM_ITEMS, exclude_seen=False)) == NUM_ITEMS
    with pytest.raises(ValueError, match="only 9 items are left"):
        rec.recommend("u0", k=NUM_ITEMS)
    with pytest.raises(ValueError, match="positive integer"):
        rec.recommend("u0", k=0)
    with pytest.raises(KeyError, match="unknown user id 'nobody'"):
        rec.recommend("nobody")
    with pytest.raises(KeyError, match="unknown item id 'i99'"):
        rec.predict(["u0"], ["i99"])
    with pytest.raises(ValueError, match="aligned"):
        rec.predict(["u0"], ["i1", "i2"])
    assert rec.predict([], []).shape == (0,)


def test_new_items_are_scored_from_text_alone(saved, monkeypatch):
    folder, *_ = saved
    rec = Recommender.from_pretrained(folder)
    before = rec.score_all(["u1"])[0]
    encoded = []
    original = rec.engine._encode
    monkeypatch.setattr(
        rec.engine, "_encode", lambda texts: encoded.append(list(texts)) or original(texts)
    )
    rec.add_items({"new1": "good movie 9 comedy", "i4": "bad film horror"})
    assert encoded == [["good movie 9 comedy", "bad film horror"]]  # the rest stays cached
    after = rec.score_all(["u1"])[0]
    assert after.shape == (NUM_ITEMS + 1,)
    np.testing.assert_allclose(np.delete(after[:NUM_ITEMS], 4), np.delete(before, 4), rtol=1e-6)
    assert after[4] != before[4]  # i4's text changed
    np.testing.assert_allclose(
        rec.predict(["u1"], ["new1"]), rec.predict_texts("u1", ["good movie 9 comedy"]), rtol=1e-5
    )
    assert "new1" in {i for i, _ in rec.recommend("u1", k=NUM_ITEMS - 1)}
    with pytest.raises(ValueError, match="empty text"):
        rec.add_items({"x": "  "})


def test_refuses_pickles_and_corrupt_files(saved, tmp_path, tiny_gpt2):
    folder, *_ = saved
    pickled = tmp_path / "pickled"
    shutil.copytree(folder, pickled)
    torch.save({"w": torch.zeros(1)}, pickled / "adapter" / "adapter_model.bin")
    with pytest.raises(ArtifactError, match=r"adapter_model\.bin: refusing to load a pickle"):
        Recommender.from_pretrained(pickled)

    truncated = tmp_path / "truncated"
    shutil.copytree(folder, truncated)
    data = (truncated / "head.safetensors").read_bytes()
    (truncated / "head.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match=r"head\.safetensors: corrupt or truncated"):
        Recommender.from_pretrained(truncated)

    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    (broken / "peftrec.json").write_text("{not json")
    with pytest.raises(ArtifactError, match=r"peftrec\.json: not valid JSON"):
        Recommender.from_pretrained(broken)

    with pytest.raises(ArtifactError, match="built on a 'bert' backbone"):
        Recommender.from_pretrained(folder, backbone=str(tiny_gpt2))
    with pytest.raises(ArtifactError, match="no such model folder"):
        Recommender.from_pretrained(tmp_path / "missing")


def test_failed_save_keeps_the_previous_model(saved, monkeypatch):
    folder, model, tokenizer = saved
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    monkeypatch.setattr(
        tokenizer, "save_pretrained", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full"))
    )
    with pytest.raises(OSError, match="disk full"):
        save(folder, model, tokenizer, "unused")
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before
    assert [p.name for p in folder.parent.iterdir() if p.name.startswith(".")] == []
    assert json.loads((folder / "peftrec.json").read_text())["format"] == "peftrec"
