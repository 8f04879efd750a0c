"""Fit one user's vector (and bias) to what they did, with the items fixed: a new user from a few
interactions without retraining, or a known one updated around what the model learned.

- :func:`ridge_fold_in` (rating models): closed-form ridge regression of
  ``rating - mean - b_i`` on ``b_u + <p_u, q_i>`` with penalty ``l2 * |(b_u, p_u) - prior|^2``.
- :func:`softmax_fold_in` (ranking models): the training loss itself, a softmax over the whole
  catalogue for each interacted item, plus ``l2 * |p_u - prior|^2``, minimised with L-BFGS.
"""

from __future__ import annotations

import torch


def ridge_fold_in(
    item_vectors: torch.Tensor,
    item_biases: torch.Tensor,
    ratings: torch.Tensor,
    mean: float,
    prior_vector: torch.Tensor,
    prior_bias: float,
    l2: float,
) -> tuple[torch.Tensor, float]:
    """``(p_u, b_u)`` for the given items' vectors ``(n, d)``, biases ``(n,)`` and
    ratings ``(n,)``."""
    vectors, biases = item_vectors.double(), item_biases.double()
    target = ratings.double() - mean - biases
    design = torch.cat(
        [torch.ones(len(vectors), 1, dtype=torch.float64), vectors], dim=1
    )  # [1, q_i]
    prior = torch.cat(
        [torch.tensor([float(prior_bias)], dtype=torch.float64), prior_vector.double()]
    )
    gram = design.T @ design + l2 * torch.eye(design.shape[1], dtype=torch.float64)
    solution = prior + torch.linalg.solve(gram, design.T @ (target - design @ prior))
    return solution[1:].float(), float(solution[0])


def softmax_fold_in(
    item_vectors: torch.Tensor,
    item_biases: torch.Tensor,
    positives: torch.Tensor,
    prior_vector: torch.Tensor,
    l2: float,
    steps: int = 50,
) -> torch.Tensor:
    """``p_u`` minimising the mean cross-entropy of each positive item against every catalogue
    item (``item_vectors`` ``(items, d)``), plus ``l2 * |p_u - prior|^2``."""
    vectors, biases = item_vectors.double(), item_biases.double()
    prior = prior_vector.double()
    user = prior.clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([user], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        logits = vectors @ user + biases
        loss = (
            -(logits[positives] - torch.logsumexp(logits, 0)).mean()
            + l2 * (user - prior).square().sum()
        )
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return user.detach().float()
