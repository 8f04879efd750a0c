"""Fact neighbours (``model.fact_neighbours``): what a user gave the items sharing facts with the
scored one, in training (torch) and as the app serves it (numpy)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from peftrec.app.neighbours import served_term, softplus
from peftrec.tasks.rating.head import RatingHead

TEXT, USERS, ITEMS, DIM = 5, 3, 6, 4
# items' entity rows per group (groups: author, publisher; width 2; -1: none)
FACTS = torch.tensor(
    [
        [[0, -1], [3, -1]],
        [[0, 1], [4, -1]],
        [[1, -1], [3, -1]],
        [[2, -1], [-1, -1]],
        [[0, -1], [4, -1]],
        [[-1, -1], [-1, -1]],
    ]
)
RATINGS = (  # users, items, ratings
    np.array([0, 0, 0, 1, 1, 2]),
    np.array([0, 1, 3, 2, 4, 5]),
    np.array([5.0, 2.0, 4.0, 3.0, 1.0, 4.0]),
)


def head_with_neighbours(seed: int = 0) -> RatingHead:
    torch.manual_seed(seed)
    knowledge = {"groups": 2, "entities": 5, "width": 2}
    head = RatingHead(TEXT, USERS, ITEMS, DIM, fact_neighbours=True, knowledge=knowledge)
    with torch.no_grad():
        head.knowledge.facts.copy_(FACTS)
        head.neighbours.gamma.fill_(0.8)
        head.neighbours.group_weight.copy_(torch.tensor([1.5, -0.5]))
        head.global_mean.fill_(3.0)
        head.user_bias.weight.normal_(std=0.3)
        head.item_text_bias.weight.normal_(std=0.3)
    head.set_history(*RATINGS, torch.randn(ITEMS, TEXT))
    head.eval()
    return head


def by_hand(head: RatingHead, user: int, item: int, skip: int | None = None) -> float:
    """n(u, i) from its definition: every rated item, weighed by the facts it shares."""
    a, s = (t.detach() for t in head.neighbours.weights())
    biases = head.items(head.rated.catalogue, torch.arange(ITEMS))[1].detach()
    b_u = head.user_bias.weight[user].item()
    num = den = 0.0
    for u, j, r in zip(*RATINGS, strict=True):
        if u != user or j == skip:
            continue
        shared = [
            len({int(e) for e in FACTS[item, g] if e >= 0} & {int(e) for e in FACTS[j, g]})
            for g in range(2)
        ]
        w = float((a * torch.tensor(shared, dtype=torch.float32)).sum())
        num += w * (r - 3.0 - b_u - float(biases[j]))
        den += w
    return float(head.neighbours.gamma) * num / (den + float(s))


def test_the_term_is_the_shrunk_residual_over_rated_items_sharing_facts():
    head = head_with_neighbours()
    users, items = torch.tensor([0, 0, 1, 2, 0]), torch.tensor([4, 2, 0, 3, 5])
    with torch.no_grad():
        term = head.neighbour_term(users, items)
    for k in range(len(users)):
        assert term[k].item() == pytest.approx(
            by_hand(head, int(users[k]), int(items[k])), abs=1e-5
        )
    assert term[4] == 0  # an item with no facts shares nothing
    assert term[3] == 0  # user 2's only rated item has no facts
    assert term[0] != 0  # item 4 shares author 0 with items 0 and 1 that user 0 rated


def test_a_training_pair_leaves_its_own_rating_out():
    head = head_with_neighbours()
    users, items = torch.tensor([0, 1]), torch.tensor([1, 4])  # both rated in training
    with torch.no_grad():
        term = head.neighbour_term(users, items)
    for k in range(2):
        expected = by_hand(head, int(users[k]), int(items[k]), skip=int(items[k]))
        assert term[k].item() == pytest.approx(expected, abs=1e-5)


def test_the_served_term_equals_the_trained_one():
    head = head_with_neighbours()
    a, s = (t.detach().numpy() for t in head.neighbours.weights())
    assert np.allclose(a, softplus(head.neighbours.group_weight.detach().numpy()))
    biases = head.items(head.rated.catalogue, torch.arange(ITEMS))[1].detach().numpy()
    for user in range(USERS):
        mine = RATINGS[0] == user
        items, ratings = RATINGS[1][mine], RATINGS[2][mine]
        residuals = ratings - 3.0 - float(head.user_bias.weight[user]) - biases[items]
        served = served_term(
            a, float(s), float(head.neighbours.gamma), FACTS.numpy(), FACTS.numpy()[items],
            residuals, 5,
        )  # fmt: skip
        unrated = torch.tensor([i for i in range(ITEMS) if i not in set(items.tolist())])
        with torch.no_grad():
            trained = head.neighbour_term(torch.full_like(unrated, user), unrated)
        np.testing.assert_allclose(served[unrated.numpy()], trained.numpy(), atol=1e-5)


def test_it_starts_at_zero_and_learns_through_gamma_and_the_weights():
    torch.manual_seed(0)
    knowledge = {"groups": 2, "entities": 5, "width": 2}
    head = RatingHead(TEXT, USERS, ITEMS, DIM, fact_neighbours=True, knowledge=knowledge)
    head.knowledge.facts.copy_(FACTS)
    head.set_history(*RATINGS, torch.randn(ITEMS, TEXT))
    users, items = torch.tensor([0, 1, 0]), torch.tensor([4, 0, 2])
    assert head.neighbour_term(users, items).abs().max() == 0
    head.pair_users(users, items)[1].sum().backward()
    assert head.neighbours.gamma.grad != 0
    head.neighbours.gamma.data.fill_(1.0)
    head.zero_grad()
    head.pair_users(users, items)[1].sum().backward()
    assert head.neighbours.group_weight.grad.abs().sum() > 0


def test_it_needs_a_knowledge_tower():
    with pytest.raises(ValueError, match="needs a knowledge tower"):
        RatingHead(TEXT, USERS, ITEMS, DIM, fact_neighbours=True)


def test_a_saved_head_keeps_the_ratings_it_reads_whatever_their_number():
    head = head_with_neighbours()
    head.fold_history()
    assert head.rated is None and len(head.neighbours.ratings) == len(RATINGS[0])
    state = {k: v.clone() for k, v in head.state_dict().items()}
    fresh = RatingHead(
        TEXT, USERS, ITEMS, DIM, fact_neighbours=True,
        knowledge={"groups": 2, "entities": 5, "width": 2},
    )  # fmt: skip
    fresh.load_state_dict(state)
    assert torch.equal(
        fresh.neighbours.items.sort().values, torch.as_tensor(RATINGS[1]).sort().values
    )
    assert sorted(fresh.neighbours.ratings.tolist()) == sorted(RATINGS[2].tolist())
