"""Ranking losses and full-ranking evaluation against brute-force references."""

from __future__ import annotations

import math

import numpy as np
import torch

from peftrec.tasks.ranking.head import RankingHead
from peftrec.tasks.ranking.step import seen_mask, target_ranks, warm_up_ranking_head
from peftrec.training.losses import bpr, other_positives, sampled_softmax


def test_other_positives_masks_the_users_other_items_only():
    users = torch.tensor([5, 5, 9, 5])
    positions = torch.tensor([0, 2, 2, 2])  # user 5 has items 0 and 2 (twice); user 9 has item 2
    mask = other_positives(users, positions, num_items=4)
    expected = torch.tensor(
        [[0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]], dtype=torch.bool
    )
    assert torch.equal(mask, expected)


def test_sampled_softmax_is_cross_entropy_without_the_masked_items():
    scores = torch.tensor([[2.0, 1.0, 0.5], [0.1, 0.2, 3.0]])
    positions = torch.tensor([0, 1])
    exclude = torch.tensor([[False, True, False], [False, False, False]])
    expected = (
        -(2.0 - math.log(math.exp(2.0) + math.exp(0.5)))
        - (0.2 - math.log(math.exp(0.1) + math.exp(0.2) + math.exp(3.0)))
    ) / 2
    assert math.isclose(
        sampled_softmax(scores, positions, exclude).mean().item(), expected, rel_tol=1e-6
    )
    assert math.isclose(
        sampled_softmax(scores * 2, positions, exclude, temperature=2.0).mean().item(),
        expected,
        rel_tol=1e-6,
    )


def test_bpr_never_samples_the_positive_or_an_excluded_item():
    scores = torch.tensor([[5.0, 0.0, -100.0]]).repeat(200, 1)
    positions = torch.zeros(200, dtype=torch.long)
    exclude = torch.tensor([[False, False, True]]).repeat(200, 1)
    loss = bpr(scores, positions, exclude, generator=torch.Generator().manual_seed(0)).mean()
    assert math.isclose(
        loss.item(), -math.log(1 / (1 + math.exp(-5.0))), rel_tol=1e-5
    )  # always item 1


def test_target_ranks_match_brute_force_and_exclude_seen_items():
    torch.manual_seed(0)
    head = RankingHead(6, num_users=5, num_items=9, dim=4)
    text = torch.randn(9, 6)
    users = np.array([0, 1, 2, 3, 4])
    targets = np.array([3, 0, 8, 5, 1])
    exclude = seen_mask(np.array([0, 0, 2, 4]), np.array([1, 2, 3, 0]), 5, 9)
    ranks = target_ranks(head, text, users, targets, exclude)
    with torch.no_grad():
        scores = head.score_all(
            head.users(torch.as_tensor(users)), head.items(text, torch.arange(9))
        )
    for u, t, rank in zip(users, targets, ranks.tolist(), strict=True):
        others = [j for j in range(9) if j != t and not exclude[u, j]]
        assert rank == 1 + sum(scores[u, j] >= scores[u, t] for j in others)


def test_warm_up_learns_a_planted_preference():
    """Users 0-9 like items 0-9, users 10-19 like items 10-19: held-out likes must rank high."""
    rng = np.random.default_rng(0)
    users, items = [], []
    for u in range(20):
        liked = rng.permutation(10)[:7] + (0 if u < 10 else 10)
        users += [u] * 7
        items += liked.tolist()
    users, items = np.array(users), np.array(items)
    held = np.array([np.flatnonzero(users == u)[-1] for u in range(20)])
    train = np.setdiff1d(np.arange(len(users)), held)
    torch.manual_seed(0)
    head = RankingHead(4, num_users=20, num_items=20, dim=8, item_text=False)
    text = torch.zeros(20, 4)
    warm_up_ranking_head(
        head,
        text,
        users[train],
        items[train],
        epochs=60,
        lr=0.05,
        l2=0.0,
        loss="softmax",
        temperature=1.0,
        seed=0,
        items_per_step=20,
    )
    ranks = target_ranks(
        head, text, users[held], items[held], seen_mask(users[train], items[train], 20, 20)
    )
    assert ranks.float().mean() <= 4.0  # 13 candidates per user, 3 of them in the user's group
