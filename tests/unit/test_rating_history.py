"""Users as what they rated (``model.user_history``): the history term of the rating head."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from peftrec.tasks.rating.head import RatedHistory, RatingHead

TEXT, USERS, ITEMS, DIM = 6, 4, 7, 3


def head_with_history(seed: int = 0) -> tuple[RatingHead, np.ndarray, np.ndarray, np.ndarray]:
    torch.manual_seed(seed)
    head = RatingHead(TEXT, USERS, ITEMS, DIM, history=True)
    with torch.no_grad():  # a trained-looking head: the history maps away from their zero start
        head.history_plain.weight.normal_()
        head.history_rated.weight.normal_()
        head.global_mean.fill_(3.0)
    rng = np.random.default_rng(seed)
    users = np.array([2, 0, 2, 1, 0, 2, 1, 2])  # user 3 rated nothing
    items = np.array([1, 4, 6, 0, 2, 3, 5, 0])
    ratings = rng.integers(1, 6, len(users)).astype(np.float64)
    head.set_history(users, items, ratings, torch.randn(ITEMS, TEXT))
    return head, users, items, ratings


def by_hand(head: RatingHead, users, items, ratings, user: int, skip: int | None = None):
    """The term from its definition, one user at a time."""
    vectors = head.items(head.rated.catalogue, torch.arange(ITEMS))[0]
    mine = [
        (i, r) for u, i, r in zip(users, items, ratings, strict=True) if u == user and i != skip
    ]
    if not mine:
        return torch.zeros(DIM)
    plain = sum(vectors[i] for i, _ in mine)
    rated = sum(vectors[i] * (r - 3.0) for i, r in mine)
    return (head.history_plain(plain) + head.history_rated(rated)) / len(mine)


def test_the_term_is_the_mean_of_the_mapped_item_vectors_over_what_the_user_rated():
    head, users, items, ratings = head_with_history()
    head.eval()
    term = head.history_term(torch.tensor([2, 0, 3, 2]))
    for row, user in enumerate([2, 0, 3, 2]):
        expected = by_hand(head, users, items, ratings, user)
        torch.testing.assert_close(term[row], expected, atol=1e-5, rtol=1e-5)
    assert term[2].abs().max() == 0  # no ratings, no term: the user is their table row


def test_a_training_pair_leaves_its_own_rating_out_of_the_user():
    head, users, items, ratings = head_with_history()
    head.eval()
    index, own = torch.tensor([2, 2, 1, 0]), torch.tensor([6, 5, 0, 1])  # item 1 not user 0's
    term = head.history_term(index, own)
    for row in range(4):
        expected = by_hand(head, users, items, ratings, int(index[row]), int(own[row]))
        torch.testing.assert_close(term[row], expected, atol=1e-5, rtol=1e-5)
    # pair_users is what the training steps call; ``users`` (serving) keeps every rating
    left_out = head.pair_users(index, own)[0]
    kept = head.users(index)[0]
    assert not torch.allclose(left_out[0], kept[0]) and torch.allclose(left_out[3], kept[3])


def test_folding_puts_the_term_in_the_table_once_and_forgets_the_histories():
    head, *_ = head_with_history()
    head.eval()
    rows = torch.arange(USERS)
    before = head.users(rows)[0].detach().clone()
    head.fold_history()
    assert head.rated is None
    torch.testing.assert_close(head.users(rows)[0], before)
    head.fold_history()  # a second fold changes nothing
    torch.testing.assert_close(head.users(rows)[0], before)


def test_the_maps_start_at_zero_so_training_starts_from_the_plain_model():
    torch.manual_seed(0)
    plain = RatingHead(TEXT, USERS, ITEMS, DIM)
    torch.manual_seed(0)
    with_history = RatingHead(TEXT, USERS, ITEMS, DIM, history=True)
    with_history.set_history(np.array([0]), np.array([1]), np.array([4.0]), torch.randn(ITEMS, 6))
    rows = torch.arange(USERS)
    torch.testing.assert_close(with_history.users(rows)[0], plain.users(rows)[0])


def test_gradients_reach_the_maps_and_the_item_tower_through_the_history():
    head, *_ = head_with_history()
    term = head.history_term(torch.tensor([0, 1, 2]))
    term.square().sum().backward()
    assert head.history_rated.weight.grad.abs().sum() > 0
    assert head.item_emb.weight.grad.abs().sum() > 0


def test_a_head_without_history_refuses_histories():
    head = RatingHead(TEXT, USERS, ITEMS, DIM)
    with pytest.raises(ValueError, match="reads no histories"):
        head.set_history(np.array([0]), np.array([1]), np.array([4.0]), torch.zeros(ITEMS, TEXT))


def test_pairs_not_in_the_histories_are_not_found():
    rated = RatedHistory(np.array([1, 0, 1]), np.array([2, 3, 0]), np.ones(3), 3, 0.0)
    rows = rated.rows_of_pairs(torch.tensor([1, 1, 0, 2, 0]), torch.tensor([0, 3, 3, 2, -1]))
    assert rows[1] == -1 and rows[3] == -1 and rows[4] == -1
    assert rated.items[rows[0]] == 0 and rated.items[rows[2]] == 3


def test_unfolding_keeps_the_users_vectors_when_a_folded_model_reads_histories_again():
    head, users, items, ratings = head_with_history()
    head.eval()
    head.fold_history()
    rows = torch.arange(USERS)
    served = head.users(rows)[0].clone()
    head.set_history(users, items, ratings, torch.randn(ITEMS, TEXT))  # a warm start's new data
    head.unfold_history()
    torch.testing.assert_close(head.users(rows)[0], served)
