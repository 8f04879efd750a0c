"""Ranking losses over the items of an item-amortised batch (positives and sampled negatives)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def other_positives(users: torch.Tensor, positions: torch.Tensor, num_items: int) -> torch.Tensor:
    """``(pairs, items)`` mask: True where the batch item is another positive of the pair's user.

    Those items are not negatives for that pair, so the losses leave them out.
    """
    _, user_row = torch.unique(users, return_inverse=True)
    positive = torch.zeros(
        int(user_row.max()) + 1 if len(users) else 0,
        num_items,
        dtype=torch.bool,
        device=users.device,
    )
    positive[user_row, positions] = True
    mask = positive[user_row]
    mask[torch.arange(len(positions), device=users.device), positions] = False
    return mask


def sampled_softmax(
    scores: torch.Tensor, positions: torch.Tensor, exclude: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Cross-entropy of each pair's positive item against the batch's other items, per pair.

    ``scores`` is ``(pairs, batch items)``; the candidates are the step's items (each appears
    once per step, sampled uniformly, so no popularity correction is needed) plus any extra
    random negatives; ``exclude`` masks the user's other positives.
    """
    logits = (scores / temperature).masked_fill(exclude, float("-inf"))
    return F.cross_entropy(logits, positions, reduction="none")


def bpr(
    scores: torch.Tensor,
    positions: torch.Tensor,
    exclude: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Bayesian personalised ranking: -log sigmoid(s_pos - s_neg), one sampled negative per pair
    (per pair, like :func:`sampled_softmax`)."""
    rows = torch.arange(len(positions), device=scores.device)
    weights = (~exclude).float()
    weights[rows, positions] = 0.0
    weights[weights.sum(1) == 0] = 1.0  # no negative in the batch for this pair: loss is constant
    negatives = torch.multinomial(weights, 1, generator=generator).squeeze(1)
    return -F.logsigmoid(scores[rows, positions] - scores[rows, negatives])


LOSSES = {"softmax": sampled_softmax, "bpr": bpr}


def step_loss(
    summed: torch.Tensor,
    penalty: torch.Tensor,
    count: int,
    *,
    l2: float,
    step_count: float | None = None,
    processes: int = 1,
) -> torch.Tensor:
    """The task loss of one process's piece of an optimizer step: its summed per-example loss
    plus ``l2`` x the mean L2 penalty per example, divided by the examples of the whole step
    (``step_count``, over all processes; default ``count``) and multiplied by ``processes``, so
    that the gradient DDP averages is the one-process gradient. The recipes add L_S and the
    text ridge to it."""
    return (summed + l2 * penalty * count) * processes / (step_count or count)


def ridge(head, text_l2: float, knowledge_l2: float = 0.0) -> torch.Tensor:
    """The ridges on the maps from what is known of an item (its text, its facts) to its vector
    and bias: what lets items without ratings, scored from those alone, generalise."""
    total = text_l2 * head.weight_penalty()
    if knowledge_l2:
        total = total + knowledge_l2 * head.knowledge_penalty()
    return total
