"""Toy data with a real signal: ratings follow a word of the item text, so text must be read."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader

from peftrec.config import AdapterConfig, BackboneConfig, ModelConfig
from peftrec.data import load_files, split_rows
from peftrec.metrics import rmse
from peftrec.models.assembly import build_model
from peftrec.models.tokens import tokenize_texts
from peftrec.tasks.rating.step import predict_ratings, warm_up_head
from peftrec.training.batches import ItemRatingsCollator, ItemShuffler, LengthBucketBatches


def test_unseen_items_are_predicted_from_their_text(toy_files, tiny_bert):
    dataset = load_files(toy_files["interactions"], toy_files["items"])
    split = split_rows(dataset, "p2")  # test items never appear in training
    train, test = dataset.interactions.subset(split.train), dataset.interactions.subset(split.test)
    assert set(test.items).isdisjoint(train.items)
    torch.manual_seed(0)
    model, tokenizer = build_model(
        BackboneConfig(name=str(tiny_bert)),
        AdapterConfig(method="lora", r=4),
        ModelConfig(dim=8, item_ids=False),
        num_users=len(dataset.user_ids),
        num_items=len(dataset.item_ids),
    )
    tokens = tokenize_texts(tokenizer, dataset.item_texts("{title}. Genres: {genres}."), 32)
    head = model.head
    head.init_biases(
        torch.as_tensor(train.users), torch.as_tensor(train.items), torch.as_tensor(train.ratings)
    )
    features = model.encode_texts(tokens)
    warm_up_head(
        head,
        features,
        train.users,
        train.items,
        train.ratings,
        epochs=60,
        batch_size=64,
        lr=0.02,
        l2=0.0,
        seed=0,
    )
    mean_only = rmse(np.full(len(test), train.ratings.mean()), test.ratings)
    from_text = rmse(predict_ratings(head, features, test.users, test.items), test.ratings)
    assert from_text < 0.5 * mean_only, (from_text, mean_only)


def test_item_amortised_training_learns_the_signal(toy_files, tiny_gpt2):
    """The LM, adapter and head trained end to end on item batches (no warm-up), on GPT-2."""
    dataset = load_files(toy_files["interactions"], toy_files["items"])
    split = split_rows(dataset, "p2")
    train, test = dataset.interactions.subset(split.train), dataset.interactions.subset(split.test)
    torch.manual_seed(0)
    model, tokenizer = build_model(
        BackboneConfig(name=str(tiny_gpt2)),
        AdapterConfig(method="lora", r=4),
        ModelConfig(dim=8, item_ids=False),
        num_users=len(dataset.user_ids),
        num_items=len(dataset.item_ids),
    )
    tokens = tokenize_texts(tokenizer, dataset.item_texts("{title}. Genres: {genres}."), 32)
    model.head.init_biases(
        torch.as_tensor(train.users), torch.as_tensor(train.items), torch.as_tensor(train.ratings)
    )
    collator = ItemRatingsCollator(
        tokens, train.users, train.items, train.ratings, tokenizer.pad_token_id
    )
    batches = LengthBucketBatches(
        ItemShuffler(collator.items_with_ratings()), [len(t) for t in tokens], 8
    )
    loader = DataLoader(range(len(tokens)), batch_sampler=batches, collate_fn=collator)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for epoch in range(15):
        batches.sampler.set_epoch(epoch)
        for batch in loader:
            ratings = batch.pop("ratings")
            predictions, _ = model(**batch)[:2]
            (predictions - ratings).square().mean().backward()
            optimizer.step()
            optimizer.zero_grad()
    mean_only = rmse(np.full(len(test), train.ratings.mean()), test.ratings)
    features = model.encode_texts(tokens)
    assert (
        rmse(predict_ratings(model.head, features, test.users, test.items), test.ratings)
        < 0.5 * mean_only
    )
