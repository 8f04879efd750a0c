"""The network on tiny backbones: shapes, parameter counts, what a step changes, pooling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from peftrec.config import AdapterConfig, BackboneConfig, ModelConfig
from peftrec.model import build_model
from peftrec.tokens import pad_batch, tokenize_texts
from peftrec.training import ItemRatingsCollator, ItemShuffler, LengthBucketBatches

NUM_USERS, NUM_ITEMS, DIM, HIDDEN, LAYERS, R = 7, 11, 8, 32, 2, 4
TEXTS = [f"{'good' if i % 2 else 'bad'} movie {i} drama" for i in range(NUM_ITEMS)]


def make(backbone_path, method: str, item_ids: bool = True):
    torch.manual_seed(0)
    return build_model(BackboneConfig(name=str(backbone_path)), AdapterConfig(method=method, r=R, dropout=0.0),
                       ModelConfig(dim=DIM, item_ids=item_ids), num_users=NUM_USERS, num_items=NUM_ITEMS)


def head_parameters(item_ids: bool) -> int:
    count = 1 + HIDDEN * DIM + HIDDEN + 1 + NUM_USERS * (DIM + 1)  # mean, projection, text bias, users
    return count + (NUM_ITEMS * (DIM + 1) if item_ids else 0)


def lora_parameters(kind: str) -> int:
    # r x (in + out) per adapted matrix: BERT query and value (32->32), GPT-2 fused c_attn (32->96)
    per_layer = 2 * R * (HIDDEN + HIDDEN) if kind == "bert" else R * (HIDDEN + 3 * HIDDEN)
    return LAYERS * per_layer


def batch_for(model, tokenizer, items=(0, 3, 5), users=(0, 1, 2, 3, 6), positions=(0, 0, 1, 2, 2)):
    tokens = tokenize_texts(tokenizer, [TEXTS[i] for i in items], 32)
    input_ids, attention_mask = pad_batch(tokens, tokenizer.pad_token_id)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "item_index": torch.tensor(items),
                "users": torch.tensor(users), "positions": torch.tensor(positions)}


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
@pytest.mark.parametrize("method", ["lora", "full", "frozen"])
def test_shapes_and_trainable_parameter_count(tiny_backbones, kind, method):
    model, tokenizer = make(tiny_backbones[kind], method)
    predictions, penalty = model(**batch_for(model, tokenizer))
    assert predictions.shape == (5,) and penalty.shape == ()
    backbone = sum(p.numel() for p in model.backbone.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    base = sum(p.numel() for n, p in model.backbone.named_parameters() if "lora_" not in n)
    expected = {"lora": lora_parameters(kind), "full": base, "frozen": 0}[method]
    assert backbone == expected
    assert total - backbone == head_parameters(item_ids=True)


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
@pytest.mark.parametrize("method", ["lora", "full", "frozen"])
def test_one_step_moves_only_what_trains(tiny_backbones, kind, method):
    model, tokenizer = make(tiny_backbones[kind], method)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(2):  # LoRA's B starts at zero: A only gets a gradient from the second step
        predictions, penalty = model(**batch_for(model, tokenizer))
        ((predictions - 4.0).square().mean() + penalty).backward()
        optimizer.step()
        optimizer.zero_grad()
    for name, param in model.named_parameters():
        changed = not torch.equal(before[name], param)
        if name.startswith("head."):
            if name in ("head.item_emb.weight", "head.item_bias.weight", "head.user_emb.weight",
                        "head.user_bias.weight"):
                continue  # only the rows in the batch move
            assert changed, name
        elif param.requires_grad:
            assert changed or "bias" in name or "pooler" in name or "LayerNorm" in name or "ln_" in name, name
        else:
            assert not changed, f"frozen weight {name} changed"
    rows = model.head.user_emb.weight.detach()
    assert not torch.equal(before["head.user_emb.weight"][0], rows[0])  # user 0 was in the batch
    assert torch.equal(before["head.user_emb.weight"][4], rows[4])  # user 4 was not


def test_lora_weights_move_and_base_is_bit_identical(tiny_bert):
    model, tokenizer = make(tiny_bert, "lora")
    base_before = {n: p.detach().clone() for n, p in model.backbone.named_parameters() if "lora_" not in n}
    lora_before = {n: p.detach().clone() for n, p in model.backbone.named_parameters() if "lora_" in n}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(2):
        predictions, _ = model(**batch_for(model, tokenizer))
        (predictions - 4.0).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    params = dict(model.backbone.named_parameters())
    assert all(torch.equal(v, params[n]) for n, v in base_before.items())
    assert all(not torch.equal(v, params[n]) for n, v in lora_before.items())


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_pooling_ignores_padding(tiny_backbones, kind):
    """A text's encoding does not depend on what it is batched with (right padding, last token)."""
    model, tokenizer = make(tiny_backbones[kind], "frozen")
    tokens = tokenize_texts(tokenizer, ["good movie", "bad drama film of the year 1 2 3 4 5 6"], 32)
    alone = model.encode_texts(tokens[:1])
    together = model.encode_texts(tokens, batch_size=2)
    assert torch.allclose(alone[0], together[0], atol=1e-5)
    assert not torch.allclose(together[0], together[1])


def test_item_amortised_batches_cover_every_rating_once():
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 20, 500), rng.integers(0, 40, 500)
    ratings = rng.integers(1, 6, 500).astype(np.float32)
    tokens = [[1] * int(n) for n in rng.integers(2, 9, 40)]
    collator = ItemRatingsCollator(tokens, users, items, ratings, pad_id=0)
    sampler = LengthBucketBatches(ItemShuffler(collator.items_with_ratings(), seed=3), [len(t) for t in tokens], 8)
    seen = []
    for batch_items in sampler:
        batch = collator(batch_items)
        assert len(set(batch_items)) == len(batch_items) == batch["input_ids"].shape[0] <= 8
        item_of_rating = batch["item_index"][batch["positions"]].numpy()
        seen += list(zip(batch["users"].numpy(), item_of_rating, batch["ratings"].numpy(), strict=True))
    assert sorted(seen) == sorted(zip(users, items, ratings, strict=True))
    first = list(sampler)
    sampler.sampler.set_epoch(1)
    assert list(sampler) != first  # a new order each epoch
    sampler.sampler.set_epoch(0)
    assert list(sampler) == first  # and the same order for the same epoch


def test_bad_adapter_method_is_refused(tiny_bert):
    with pytest.raises(ValueError, match=r"adapter\.method 'prefix'"):
        make(tiny_bert, "prefix")
