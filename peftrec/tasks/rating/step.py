"""The rating task's step: the towers warmed up on fixed text features, ratings predicted from
them, and their evaluation (RMSE / MSE / MAE, by warm and cold group)."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from peftrec.metrics import rmse, scores_by_group, warm_cold
from peftrec.tasks.rating.head import RatingHead
from peftrec.training.losses import ridge


def warm_up_head(
    head: RatingHead,
    item_text: torch.Tensor,
    users: np.ndarray,
    items: np.ndarray,
    ratings: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    l2: float,
    seed: int,
    text_l2: float = 0.0,
    knowledge_l2: float = 0.0,
    valid: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> list[float]:
    """Train the towers on fixed pooled text features (``item_text``) before the backbone adapts.

    Plain minibatch SGD over ratings, with no LM pass at all, so it costs seconds. Returns the
    validation RMSE after each epoch (empty without ``valid``).
    """
    generator = torch.Generator().manual_seed(seed)
    u = torch.as_tensor(users, dtype=torch.long)
    i = torch.as_tensor(items, dtype=torch.long)
    r = torch.as_tensor(ratings, dtype=torch.float32)
    optimizer = torch.optim.Adam([p for p in head.parameters() if p.requires_grad], lr=lr)
    history = []
    head.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(r), generator=generator).split(batch_size):
            user = head.pair_users(u[batch], i[batch])
            item = head.items(item_text[i[batch]], i[batch])
            loss = (head.score(user, item) - r[batch]).square().mean() + l2 * head.penalty(
                user, item
            )
            loss = loss + ridge(head, text_l2, knowledge_l2)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if valid is not None:
            history.append(rmse(predict_ratings(head, item_text, *valid[:2]), valid[2]))
    return history


@torch.no_grad()
def predict_ratings(
    head: RatingHead,
    item_text: torch.Tensor,
    users: np.ndarray,
    items: np.ndarray,
    batch_size: int = 65536,
) -> np.ndarray:
    """Ratings for (user, item) index pairs from precomputed pooled item encodings."""
    was_training = head.training
    head.eval()
    device = head.reference_parameter().device
    index = torch.arange(len(item_text), device=device)
    vectors = head.items(item_text.to(device), index)
    out = []
    for start in range(0, len(users), batch_size):
        u = torch.as_tensor(users[start : start + batch_size], dtype=torch.long, device=device)
        i = torch.as_tensor(items[start : start + batch_size], dtype=torch.long, device=device)
        out.append(head.score(head.pair_users(u, i), (vectors[0][i], vectors[1][i])).cpu())
    head.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)


def evaluate_ratings(
    accelerator,
    head,
    item_text,
    loader,
    metric,
    *,
    known_users: np.ndarray | None = None,
    known_items: np.ndarray | None = None,
) -> dict[str, float | int | None]:
    """RMSE/MSE/MAE (and the count) over a prepared loader of (user, item, rating), gathered
    across processes; ``gather_for_metrics`` drops the samples that padded the last batch.

    With ``known_users``/``known_items`` (boolean masks: has training ratings), the errors are
    also reported apart for warm pairs (both known), cold items and cold users: ``rmse_warm``,
    ``rmse_cold_items``, ``rmse_cold_users`` and their counts ``count_*`` (None when empty).
    """
    parts = {"predictions": [], "references": [], "users": [], "items": []}
    for users, items, ratings in loader:
        predictions = torch.as_tensor(
            predict_ratings(head, item_text, users.cpu().numpy(), items.cpu().numpy()),
            device=ratings.device,
        )
        gathered = accelerator.gather_for_metrics((predictions, ratings, users, items))
        for key, value in zip(parts, gathered, strict=True):
            parts[key].append(value.cpu().numpy())
    arrays = {k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}
    scores = {
        k: float(v)
        for k, v in metric.compute(
            predictions=arrays["predictions"], references=arrays["references"]
        ).items()
    }
    scores["count"] = len(arrays["references"])
    if known_users is not None and known_items is not None:
        warm_user = np.asarray(known_users, dtype=bool)[arrays["users"].astype(np.int64)]
        warm_item = np.asarray(known_items, dtype=bool)[arrays["items"].astype(np.int64)]
        scores.update(
            scores_by_group(
                warm_cold(warm_user, warm_item),
                lambda rows: metric.compute(
                    predictions=arrays["predictions"][rows], references=arrays["references"][rows]
                ),
                ("rmse",),
            )
        )
    return scores


def rating_loader(interactions, batch_size: int = 8192) -> DataLoader:
    tensors = (
        torch.as_tensor(interactions.users),
        torch.as_tensor(interactions.items),
        torch.as_tensor(interactions.ratings, dtype=torch.float32),
    )
    return DataLoader(TensorDataset(*tensors), batch_size=batch_size)
