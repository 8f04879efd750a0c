"""Building blocks of the ranking recipe: head warm-up on fixed text features, P3 evaluation."""

from __future__ import annotations

import numpy as np
import torch

from .heads import TwoTowers
from .losses import LOSSES, other_positives
from .metrics import rank_of_targets


def seen_mask(users: np.ndarray, items: np.ndarray, num_users: int, num_items: int) -> torch.Tensor:
    """``(users, items)`` bool matrix of the given interactions (e.g. training items, excluded)."""
    mask = torch.zeros(num_users, num_items, dtype=torch.bool)
    mask[torch.as_tensor(users), torch.as_tensor(items)] = True
    return mask


def ranking_step_loss(scores: torch.Tensor, users: torch.Tensor, positions: torch.Tensor, loss: str,
                      temperature: float) -> torch.Tensor:
    """The ranking loss of one step: each pair's positive against the step's other items."""
    exclude = other_positives(users, positions, scores.shape[1])
    if loss == "softmax":
        return LOSSES["softmax"](scores, positions, exclude, temperature)
    return LOSSES["bpr"](scores, positions, exclude)


def warm_up_ranking_head(head: TwoTowers, item_text: torch.Tensor, users: np.ndarray, items: np.ndarray, *,
                         epochs: int, lr: float, l2: float, loss: str, temperature: float, seed: int,
                         items_per_step: int = 128, text_l2: float = 0.0, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Train the towers on fixed pooled text features with the same loss as the adapted phase.

    Each step samples ``items_per_step`` items and uses all their training pairs, exactly like
    the item-amortised LM phase, but without any LM pass (seconds per epoch). Pass ``optimizer``
    to continue across calls (one call per epoch, with validation in between).
    """
    generator = torch.Generator().manual_seed(seed)
    order = np.argsort(items, kind="stable")
    pair_users = torch.as_tensor(users[order])
    counts = np.bincount(items, minlength=len(item_text))
    offsets = np.concatenate([[0], np.cumsum(counts)])
    rated = torch.as_tensor(np.flatnonzero(counts))
    optimizer = optimizer or torch.optim.Adam([p for p in head.parameters() if p.requires_grad], lr=lr)
    head.train()
    for _ in range(epochs):
        for step_items in rated[torch.randperm(len(rated), generator=generator)].split(items_per_step):
            rows = [np.arange(offsets[i], offsets[i + 1]) for i in step_items.tolist()]
            positions = torch.as_tensor(np.repeat(np.arange(len(rows)), [len(r) for r in rows]))
            u = pair_users[np.concatenate(rows)]
            vectors = head.items(item_text[step_items], step_items)
            user = head.users(u)
            scores = head.score_all(user, vectors)
            penalty = head.penalty(user, (vectors[0][positions], vectors[1][positions]))
            step_loss = ranking_step_loss(scores, u, positions, loss, temperature) + l2 * penalty
            if text_l2:
                step_loss = step_loss + text_l2 * head.weight_penalty()
            optimizer.zero_grad()
            step_loss.backward()
            optimizer.step()


@torch.no_grad()
def target_ranks(head: TwoTowers, item_text: torch.Tensor, users: np.ndarray, targets: np.ndarray,
                 exclude: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Full-ranking rank of each user's target item among all items not excluded (P3)."""
    was_training = head.training
    head.eval()
    device = head.user_emb.weight.device
    items = head.items(item_text.to(device), torch.arange(len(item_text), device=device))
    ranks = []
    for start in range(0, len(users), chunk):
        u = torch.as_tensor(users[start : start + chunk], device=device)
        scores = head.score_all(head.users(u), items).float().cpu()
        ranks.append(rank_of_targets(scores, torch.as_tensor(targets[start : start + chunk]), exclude[u.cpu()]))
    head.train(was_training)
    return torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long)
