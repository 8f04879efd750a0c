"""Frozen encodings kept on disk per text: a second run encodes only texts it has not seen, a
changed backbone (an adapter, other weights, other pooling) gets another key, and the stored
vectors are the ones that were computed."""

from __future__ import annotations

import torch

from peftrec.models.encoding_cache import cached_encodings, model_key, text_keys


def encoder(calls: list[list[int]]):
    def encode(rows: list[int]) -> torch.Tensor:
        calls.append(list(rows))
        return torch.stack([torch.full((3,), float(r) + 0.5) for r in rows])

    return encode


def test_only_new_texts_are_encoded_and_stored_vectors_come_back(tmp_path):
    tokens = [[1, 2], [3], [1, 2, 3]]
    calls: list[list[int]] = []
    first = cached_encodings("k", tokens, encoder(calls), folder=tmp_path)
    assert calls == [[0, 1, 2]]
    more = [[3], [9, 9], [1, 2]]  # two seen (in another order), one new
    second = cached_encodings("k", more, encoder(calls), folder=tmp_path)
    assert calls[-1] == [1]
    torch.testing.assert_close(second[0], first[1])
    torch.testing.assert_close(second[2], first[0])
    assert second[1].tolist() == [1.5, 1.5, 1.5]  # computed for its row in this call
    third = cached_encodings("k", more, encoder(calls), folder=tmp_path)
    assert len(calls) == 2  # everything on disk now
    torch.testing.assert_close(third, second)
    other = cached_encodings("other", more, encoder(calls), folder=tmp_path)
    assert calls[-1] == [0, 1, 2] and other.shape == (3, 3)


def test_the_key_follows_the_weights_and_the_pooling():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    key = model_key(net, "mean")
    assert model_key(net, "mean") == key
    assert model_key(net, "cls") != key
    with torch.no_grad():
        net[1].weight[0, 0] += 1e-3
    assert model_key(net, "mean") != key


def test_texts_differ_by_their_tokens_only():
    keys = text_keys([[1, 2], [1, 2], [2, 1], []])
    assert (keys[0] == keys[1]).all() and not (keys[0] == keys[2]).all()
    assert keys.shape == (4, 16)
