"""The taste recipe: its own short loop, the shared building blocks around it."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from peftrec.tasks import TASKS
from peftrec.training.recipe import build_run_model, load_run_data, make_optimizer, save_run, start
from tests.unit.taste_task.config import TasteRecipeConfig


def main(argv: list[str]) -> dict:
    task = TASKS["taste"]
    cfg, accelerator = start(TasteRecipeConfig, argv, task)
    data = load_run_data(cfg, task)
    model, tokenizer, tokens = build_run_model(cfg, task, data)
    text = model.encode_texts(tokens)  # a frozen backbone: every item's pooled text, once
    rows = torch.arange(len(text))
    train, test = data.train, data.test
    histories = [train.items[train.users == u] for u in range(len(data.dataset.user_ids))]
    liked = torch.as_tensor(train.ratings > 3.0).float()
    optimizer = make_optimizer(cfg, model)
    model.train()
    for _ in range(cfg.train.epochs):
        items = model.head.items(text, rows)
        users = model.head.history_users(items, histories)
        logits = model.head.logits(users[train.users], tuple(t[train.items] for t in items))
        loss = F.binary_cross_entropy_with_logits(logits, liked)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    with torch.no_grad():
        items = model.head.items(text, rows)
        users = model.head.history_users(items, histories)
        guess = model.head.logits(users[test.users], tuple(t[test.items] for t in items)) > 0
    results = {"test_accuracy": float(np.mean(guess.numpy() == (test.ratings > 3.0)))}
    save_run(accelerator, cfg, task, model, tokenizer, data, results, results, item_text=text)
    return results
