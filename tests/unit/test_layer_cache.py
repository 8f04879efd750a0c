"""The lower-layer cache of top_layers: same encodings and gradients as the full forward."""

from __future__ import annotations

import pytest
import torch

from peftrec.config import AdapterConfig, BackboneConfig, ModelConfig
from peftrec.models.adapters import transformer_blocks, unfreeze_top_layers
from peftrec.models.assembly import build_model
from peftrec.models.layer_cache import LowerLayerCache, token_key
from peftrec.models.tokens import pad_batch, tokenize_texts

NUM_USERS, NUM_ITEMS, HIDDEN = 5, 9, 64
TEXTS = [
    f"{'good' if i % 2 else 'bad'} movie {i} " + "drama film " * (i % 4) for i in range(NUM_ITEMS)
]


def make(path, method: str = "top_layers", seed: int = 0):
    torch.manual_seed(seed)
    model, tokenizer = build_model(
        BackboneConfig(name=str(path)),
        AdapterConfig(method=method, top_k_layers=1),
        ModelConfig(dim=8),
        num_users=NUM_USERS,
        num_items=NUM_ITEMS,
    )
    return model, tokenize_texts(tokenizer, TEXTS, 32)


def batch(model, tokens, items=(7, 0, 3, 5)):
    input_ids, attention_mask = pad_batch([tokens[i] for i in items], model.pad_id)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "item_index": torch.tensor(items),
        "users": torch.tensor([0, 1, 2, 3, 4]),
        "positions": torch.tensor([0, 1, 1, 2, 3]),
    }


@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama", "qwen2"])
def test_cached_encoding_equals_the_full_forward(tiny_backbones, kind):
    model, tokens = make(tiny_backbones[kind])
    model.eval()
    everything = sorted(
        range(NUM_ITEMS), key=lambda i: len(tokens[i])
    )  # the order the cache batches in
    b = batch(model, tokens, everything)
    full_all = model.encode(b["input_ids"], b["attention_mask"])
    small = batch(model, tokens)
    full_small = model.encode(small["input_ids"], small["attention_mask"])

    model.cache_lower_layers(tokens, batch_size=NUM_ITEMS)
    cached_all = model.encode(b["input_ids"], b["attention_mask"], b["item_index"])
    cached_small = model.encode(small["input_ids"], small["attention_mask"], small["item_index"])
    assert torch.equal(cached_all, full_all)  # the same padded batch: bit for bit
    assert (cached_small - full_small).abs().max() < 1e-5  # another batch composition: ~1e-6
    assert not torch.allclose(cached_small[0], cached_small[1])
    with_cache = model.encode_texts(tokens, batch_size=4)
    model.layer_cache = None
    assert (with_cache - model.encode_texts(tokens, batch_size=4)).abs().max() < 1e-5


@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama"])
def test_only_the_trained_blocks_run(tiny_backbones, kind):
    model, tokens = make(tiny_backbones[kind])
    model.cache_lower_layers(tokens)
    blocks = transformer_blocks(model.backbone)
    calls = {"embeddings": 0, "block 0": 0, "block 1": 0}
    embeddings = model.backbone.get_input_embeddings()
    embeddings.register_forward_hook(
        lambda *_: calls.__setitem__("embeddings", calls["embeddings"] + 1)
    )
    blocks[0].register_forward_hook(lambda *_: calls.__setitem__("block 0", calls["block 0"] + 1))
    blocks[1].register_forward_hook(lambda *_: calls.__setitem__("block 1", calls["block 1"] + 1))
    model(**batch(model, tokens))
    model.encode_texts(tokens, batch_size=4)
    assert calls == {
        "embeddings": 0,
        "block 0": 0,
        "block 1": 4,
    }  # 1 training batch + 3 of encode_texts


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_training_through_the_cache_moves_the_same_parameters(tiny_backbones, kind):
    grads = {}
    for cached in (False, True):
        model, tokens = make(tiny_backbones[kind])
        model.eval()  # no dropout, so both paths compute the same function
        if cached:
            model.cache_lower_layers(tokens)
        predictions, penalty = model(**batch(model, tokens))[:2]
        ((predictions - 4.0).square().mean() + penalty).backward()
        grads[cached] = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads[True].keys() == grads[False].keys()
    assert any(n.startswith("backbone.") for n in grads[True])
    for name, grad in grads[False].items():
        assert torch.allclose(grads[True][name], grad, atol=1e-6, rtol=1e-4), name
        assert grad.abs().sum() > 0 or "item_" in name or "user_" in name, f"{name} got no gradient"

    model, tokens = make(tiny_backbones[kind])  # and a real training step in train mode
    model.cache_lower_layers(tokens)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    predictions, penalty = model(**batch(model, tokens))[:2]
    ((predictions - 4.0).square().mean() + penalty).backward()
    optimizer.step()
    moved = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    assert {n for n in moved if n.startswith("backbone.")} == {
        n for n in grads[False] if n.startswith("backbone.")
    }
    assert all(p.requires_grad for n, p in model.named_parameters() if n in moved)


def test_changed_texts_or_weights_invalidate_the_cache(tiny_bert):
    model, tokens = make(tiny_bert)
    cache = model.cache_lower_layers(tokens)
    assert model.cache_lower_layers([list(t) for t in tokens]) is cache  # same tokens: kept
    changed = [list(t) for t in tokens]
    changed[3][1] = changed[2][1] if changed[2][1] != changed[3][1] else changed[3][1] + 1
    assert not cache.matches(changed) and token_key(changed) != token_key(tokens)
    with pytest.raises(ValueError, match="not the cached texts"):
        model(**batch(model, changed))
    assert model.cache_lower_layers(changed) is not cache  # rebuilt for the new texts
    model(**batch(model, changed))

    model.eval()
    kept, version = model.layer_cache, model.layer_cache.version
    model.load_state_dict(
        model.state_dict()
    )  # the same values written again (resuming a checkpoint)
    assert kept._weights_version() != version and model.cache_lower_layers(changed) is kept
    before = model(**batch(model, changed))[0]
    with torch.no_grad():
        model.backbone.embeddings.word_embeddings.weight.mul_(2.0)  # a frozen weight changes
    with pytest.raises(RuntimeError, match="frozen weight changed"):
        model(**batch(model, changed))
    fresh = batch(model, changed)
    model.cache_lower_layers(changed)
    cached = model.encode(fresh["input_ids"], fresh["attention_mask"], fresh["item_index"])
    assert (cached - model.encode(fresh["input_ids"], fresh["attention_mask"])).abs().max() < 1e-5
    assert not torch.allclose(model(**fresh)[0], before)


def test_cache_size_is_bounded_and_stated(tiny_bert):
    model, tokens = make(tiny_bert)
    cache = model.cache_lower_layers(tokens)
    assert cache.nbytes == sum(map(len, tokens)) * HIDDEN * 4 and len(cache) == NUM_ITEMS
    model.layer_cache = None
    with pytest.raises(ValueError, match=r"need 0 MiB, more than max_mib=1e-06"):
        model.cache_lower_layers(tokens, max_mib=1e-6)


@pytest.mark.parametrize(
    ("method", "message"),
    [
        ("lora", "wrapped by PEFT"),
        ("prefix", "wrapped by PEFT"),
        ("full", "must be frozen"),
        ("frozen", "no transformer block trains"),
    ],
)
def test_cache_refuses_other_methods(tiny_bert, method, message):
    model, tokens = make(tiny_bert, method)
    with pytest.raises(ValueError, match=message):
        model.cache_lower_layers(tokens)


@pytest.mark.parametrize("kind", ["roberta", "electra"])
def test_other_bert_family_encoders(kind):
    from transformers import ElectraConfig, ElectraModel, RobertaConfig, RobertaModel

    torch.manual_seed(0)
    small = {
        "vocab_size": 50,
        "hidden_size": 32,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "max_position_embeddings": 64,
    }
    backbone = (
        RobertaModel(RobertaConfig(**small, pad_token_id=1))
        if kind == "roberta"
        else ElectraModel(ElectraConfig(**small, embedding_size=16))
    ).eval()
    unfreeze_top_layers(backbone, 2)
    tokens = [[0, *range(5, 5 + n), 2] for n in (3, 9, 1, 6)]
    cache = LowerLayerCache(backbone, tokens, pad_id=1, batch_size=2)
    assert cache.start == 1
    input_ids, attention_mask = pad_batch(tokens, 1)
    full = backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    cached = cache.top(torch.arange(4), input_ids, attention_mask)
    real = attention_mask.bool()
    assert (cached[real] - full[real]).abs().max() < 1e-5


def test_frozen_backbone_features_are_encoded_once(tiny_bert):
    """A frozen backbone's pooled features are cached: training steps and evaluation run no LM."""
    model, tokenizer = build_model(
        BackboneConfig(name=str(tiny_bert)),
        AdapterConfig(method="frozen"),
        ModelConfig(dim=4),
        num_users=3,
        num_items=4,
    )
    tokens = tokenize_texts(
        tokenizer, ["good movie", "bad film", "drama", "comedy of the year"], 16
    )
    expected = model.encode_texts(tokens)
    model.cache_features(tokens)
    calls = []
    model.backbone.register_forward_hook(lambda *args: calls.append(1))
    assert torch.equal(model.encode_texts(tokens), expected)
    input_ids, attention_mask = pad_batch([tokens[i] for i in (2, 0)], tokenizer.pad_token_id)
    scores = model(
        input_ids,
        attention_mask,
        torch.tensor([2, 0]),
        users=torch.tensor([1, 1, 0]),
        positions=torch.tensor([0, 1, 1]),
    ).scores
    assert calls == [] and scores.shape == (3,)
    assert torch.allclose(
        model.encode(input_ids, attention_mask, torch.tensor([2, 0])), expected[[2, 0]]
    )
    lora, _ = build_model(
        BackboneConfig(name=str(tiny_bert)),
        AdapterConfig(method="lora"),
        ModelConfig(),
        num_users=3,
        num_items=4,
    )
    with pytest.raises(ValueError, match="the backbone trains"):
        lora.cache_features(tokens)
