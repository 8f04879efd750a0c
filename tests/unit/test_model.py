"""The network on tiny backbones: a matrix of {bert, gpt2} x methods x {rating, ranking}."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from peftrec.config import AdapterConfig, BackboneConfig, ModelConfig
from peftrec.models.assembly import build_model
from peftrec.models.tokens import pad_batch, tokenize_texts
from peftrec.training.batches import ItemRatingsCollator, ItemShuffler, LengthBucketBatches

NUM_USERS, NUM_ITEMS, DIM, HIDDEN, LAYERS, R = 7, 11, 8, 64, 2, 4
INNER = 2 * HIDDEN  # BERT's feed-forward width in conftest
NUM_VIRTUAL = 4
TEXTS = [f"{'good' if i % 2 else 'bad'} movie {i} drama" for i in range(NUM_ITEMS)]
METHODS = ["lora", "prefix", "top_layers", "full", "frozen", "qlora"]
PEFT_EXTRA = {  # further PEFT methods, with no peftrec code per method
    "ia3": {"method": "peft", "peft_type": "IA3"},
    "prompt": {"method": "peft", "peft_type": "PROMPT_TUNING"},
    "dora": {"method": "lora", "peft_kwargs": {"use_dora": True}},
}


def adapter_config(method: str) -> AdapterConfig:
    options = PEFT_EXTRA.get(method, {"method": method})
    return AdapterConfig(
        r=R, dropout=0.0, num_virtual_tokens=NUM_VIRTUAL, top_k_layers=1, **options
    )


def make(backbone_path, method: str, item_ids: bool = True, task: str = "rating"):
    torch.manual_seed(0)
    return build_model(
        BackboneConfig(name=str(backbone_path)),
        adapter_config(method),
        ModelConfig(dim=DIM, item_ids=item_ids),
        num_users=NUM_USERS,
        num_items=NUM_ITEMS,
        task=task,
    )


def head_parameters(item_ids: bool, task: str = "rating") -> int:
    count = HIDDEN * DIM + HIDDEN + 1 + NUM_USERS * DIM  # projection, text bias, user vectors
    count += 1 + NUM_USERS if task == "rating" else 0  # global mean, user biases
    return count + (NUM_ITEMS * (DIM + 1) if item_ids else 0)


def bert_layer() -> int:  # q, k, v, o (with biases), 2 LayerNorms, feed-forward
    return (
        4 * (HIDDEN * HIDDEN + HIDDEN)
        + 2 * 2 * HIDDEN
        + (HIDDEN * INNER + INNER)
        + (INNER * HIDDEN + HIDDEN)
    )


def gpt2_block() -> int:  # 2 LayerNorms, fused qkv, out projection, MLP 4x wide
    return (
        2 * 2 * HIDDEN
        + (HIDDEN * 3 * HIDDEN + 3 * HIDDEN)
        + (HIDDEN * HIDDEN + HIDDEN)
        + (HIDDEN * 4 * HIDDEN + 4 * HIDDEN)
        + (4 * HIDDEN * HIDDEN + HIDDEN)
    )


def llama_block(kind: str) -> int:  # q, k, v, o (Qwen2: q, k, v with biases), gated MLP, 2 RMSNorms
    biases = 3 * HIDDEN if kind == "qwen2" else 0
    return 4 * HIDDEN * HIDDEN + biases + 3 * HIDDEN * INNER + 2 * HIDDEN


def top_block(kind: str) -> int:
    """The last block and what follows it: GPT-2's ln_f, LLaMA's final RMSNorm."""
    return {"bert": bert_layer(), "gpt2": gpt2_block() + 2 * HIDDEN}.get(kind) or llama_block(
        kind
    ) + HIDDEN


def expected_backbone_parameters(kind: str, method: str, base: int) -> int:
    # r x (in + out) per matrix: BERT query and value, LLaMA/Qwen q_proj and v_proj, GPT-2's
    # fused c_attn
    lora = LAYERS * (R * (HIDDEN + 3 * HIDDEN) if kind == "gpt2" else 2 * R * (HIDDEN + HIDDEN))
    return {
        "lora": lora,
        "qlora": lora,
        "dora": lora + LAYERS * 2 * HIDDEN,  # + one magnitude per output feature
        "prefix": NUM_VIRTUAL
        * LAYERS
        * 2
        * HIDDEN,  # a key and a value per virtual token and layer
        "prompt": NUM_VIRTUAL * HIDDEN,  # one input embedding per virtual token
        "ia3": LAYERS
        * (HIDDEN + HIDDEN + HIDDEN + INNER),  # key, value outputs; both output.dense inputs
        "top_layers": top_block(kind),
        "full": base,
        "frozen": 0,
    }[method]


def batch_for(tokenizer, items=(0, 3, 5), users=(0, 1, 2, 3, 6), positions=(0, 0, 1, 2, 2)):
    tokens = tokenize_texts(tokenizer, [TEXTS[i] for i in items], 32)
    input_ids, attention_mask = pad_batch(tokens, tokenizer.pad_token_id)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "item_index": torch.tensor(items),
        "users": torch.tensor(users),
        "positions": torch.tensor(positions),
    }


CASES = [(kind, method) for kind in ("bert", "gpt2", "llama", "qwen2") for method in METHODS] + [
    ("bert", "ia3"),
    ("bert", "prompt"),
    ("gpt2", "prompt"),
    ("bert", "dora"),
]


@pytest.mark.parametrize("task", ["rating", "ranking"])
@pytest.mark.parametrize(("kind", "method"), CASES)
def test_shapes_and_trainable_parameter_count(tiny_backbones, kind, method, task):
    model, tokenizer = make(tiny_backbones[kind], method, task=task)
    predictions, penalty = model(**batch_for(tokenizer))[:2]
    assert predictions.shape == (5,) and penalty.shape == ()
    backbone = sum(p.numel() for p in model.backbone.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    base = sum(p.numel() for n, p in model.backbone.named_parameters() if "lora_" not in n)
    assert backbone == expected_backbone_parameters(kind, method, base)
    assert total - backbone == head_parameters(item_ids=True, task=task)


@pytest.mark.parametrize("task", ["rating", "ranking"])
@pytest.mark.parametrize(("kind", "method"), CASES)
def test_one_step_moves_what_trains_and_nothing_else(tiny_backbones, kind, method, task):
    model, tokenizer = make(tiny_backbones[kind], method, task=task)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(2):  # LoRA's B starts at zero: A only gets a gradient from the second step
        predictions, penalty = model(**batch_for(tokenizer))[:2]
        ((predictions - 4.0).square().mean() + penalty).backward()
        optimizer.step()
        optimizer.zero_grad()
    partial = (
        "pooler",
        "item_emb",
        "item_bias",
        "user_emb",
        "user_bias",
    )  # unused, or rows off the batch
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert not torch.equal(before[name], param) or any(p in name for p in partial), (
                f"{name} did not move"
            )
        else:
            assert torch.equal(before[name], param), f"frozen weight {name} changed"
    for name, buffer in model.named_buffers():
        assert torch.equal(buffers[name], buffer), f"buffer {name} changed"
    rows = model.head.user_emb.weight.detach()
    assert not torch.equal(before["head.user_emb.weight"][0], rows[0])  # user 0 was in the batch
    assert torch.equal(before["head.user_emb.weight"][4], rows[4])  # user 4 was not


@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama"])
@pytest.mark.parametrize("method", ["prefix", "prompt"])
def test_prompt_methods_really_change_the_encoding(tiny_backbones, kind, method):
    adapted, tokenizer = make(tiny_backbones[kind], method)
    plain, _ = make(tiny_backbones[kind], "frozen")
    tokens = tokenize_texts(tokenizer, TEXTS[:3], 32)
    assert not torch.allclose(adapted.encode_texts(tokens), plain.encode_texts(tokens), atol=1e-3)


def test_qlora_backbone_is_quantized(tiny_bert):
    import bitsandbytes as bnb

    model, _ = make(tiny_bert, "qlora")
    assert (
        sum(isinstance(m, bnb.nn.Linear4bit) for m in model.backbone.modules()) == LAYERS * 6 + 1
    )  # + pooler


def test_bad_adapter_settings_are_refused(tiny_bert):
    def build(**adapter):
        build_model(
            BackboneConfig(name=str(tiny_bert)),
            AdapterConfig(**adapter),
            ModelConfig(),
            num_users=2,
            num_items=2,
        )

    with pytest.raises(ValueError, match=r"adapter\.peft_type 'NOPE' is not a PEFT method"):
        build(method="peft", peft_type="NOPE")
    with pytest.raises(ValueError, match=r"top_k_layers must be between 1 and 2, got 3"):
        build(method="top_layers", top_k_layers=3)
    with pytest.raises(ValueError, match=r"quant_bits must be 4 or 8, got 3"):
        build(method="qlora", quant_bits=3)


@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama", "qwen2"])
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
    sampler = LengthBucketBatches(
        ItemShuffler(collator.items_with_ratings(), seed=3), [len(t) for t in tokens], 8
    )
    seen = []
    for batch_items in sampler:
        batch = collator(batch_items)
        assert len(set(batch_items)) == len(batch_items) == batch["input_ids"].shape[0] <= 8
        item_of_rating = batch["item_index"][batch["positions"]].numpy()
        seen += list(
            zip(batch["users"].numpy(), item_of_rating, batch["ratings"].numpy(), strict=True)
        )
    assert sorted(seen) == sorted(zip(users, items, ratings, strict=True))
    first = list(sampler)
    sampler.sampler.set_epoch(1)
    assert list(sampler) != first  # a new order each epoch
    sampler.sampler.set_epoch(0)
    assert list(sampler) == first  # and the same order for the same epoch


def test_backbone_dropout_can_be_switched_off(tiny_bert):
    """backbone.dropout=0 makes training-mode encodings deterministic (no dropout
    anywhere inside)."""
    model, tokenizer = build_model(
        BackboneConfig(name=str(tiny_bert), dropout=0.0),
        AdapterConfig(dropout=0.0),
        ModelConfig(dim=DIM),
        num_users=NUM_USERS,
        num_items=NUM_ITEMS,
    )
    default, _ = make(tiny_bert, "lora")
    input_ids, attention_mask = pad_batch(
        tokenize_texts(tokenizer, TEXTS[:4], 32), tokenizer.pad_token_id
    )
    model.train()
    default.train()
    assert torch.equal(
        model.encode(input_ids, attention_mask), model.encode(input_ids, attention_mask)
    )
    assert not torch.equal(
        default.encode(input_ids, attention_mask), default.encode(input_ids, attention_mask)
    )


@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tiny_backbones, kind):
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model, tokenizer = build_model(
            BackboneConfig(
                name=str(tiny_backbones[kind]), dropout=0.0, gradient_checkpointing=checkpointing
            ),
            AdapterConfig(r=R, dropout=0.0),
            ModelConfig(dim=DIM),
            num_users=NUM_USERS,
            num_items=NUM_ITEMS,
        )
        base = model.backbone.get_base_model()
        assert base.is_gradient_checkpointing == checkpointing
        model.train()
        torch.nn.init.normal_(
            next(p for n, p in model.named_parameters() if "lora_B" in n), std=0.1
        )
        output = model(**batch_for(tokenizer))
        loss = (output.scores - 4.0).square().mean() + output.penalty
        loss.backward()
        results.append(
            (
                loss.item(),
                {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None},
            )
        )
    (plain, plain_grads), (checkpointed, checkpointed_grads) = results
    assert plain == pytest.approx(checkpointed, abs=1e-6)
    assert plain_grads.keys() == checkpointed_grads.keys() and any(
        "lora_A" in n for n in plain_grads
    )
    for name, grad in plain_grads.items():
        assert torch.allclose(grad, checkpointed_grads[name], atol=1e-6), name
