"""Building blocks of the ranking task: the step's candidates across processes, its loss, head
warm-up on fixed text features, and P3 evaluation."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.distributed as dist

from peftrec.metrics import rank_of_targets, scores_by_group
from peftrec.models.towers import TwoTowers
from peftrec.training.batches import ItemGroups
from peftrec.training.losses import LOSSES, other_positives, ridge


def seen_mask(users: np.ndarray, items: np.ndarray, num_users: int, num_items: int) -> torch.Tensor:
    """``(users, items)`` bool matrix of the given interactions (e.g. training items, excluded)."""
    mask = torch.zeros(num_users, num_items, dtype=torch.bool)
    mask[torch.as_tensor(users), torch.as_tensor(items)] = True
    return mask


def excluded_items(data) -> tuple[torch.Tensor, torch.Tensor]:
    """``(validation, test)`` masks of the items a run's ranking leaves out for each user: what
    the model line learned from, and everything the user interacted with before the test
    (training and validation; on p4 every row of blocks 1..t)."""
    shape = len(data.dataset.user_ids), len(data.dataset.item_ids)
    learned = data.train if data.learned is None else data.learned
    valid = seen_mask(learned.users, learned.items, *shape)
    if data.before_test is None:
        return valid, valid | seen_mask(data.valid.users, data.valid.items, *shape)
    return valid, seen_mask(data.before_test.users, data.before_test.items, *shape)


def ranking_step_loss(
    scores: torch.Tensor,
    users: torch.Tensor,
    positions: torch.Tensor,
    loss: str,
    temperature: float,
) -> torch.Tensor:
    """The ranking loss of each pair of a step: its positive against the step's other items."""
    exclude = other_positives(users, positions, scores.shape[1])
    if loss == "softmax":
        return LOSSES["softmax"](scores, positions, exclude, temperature)
    return LOSSES["bpr"](scores, positions, exclude)


class _GatherRows(torch.autograd.Function):
    """Every process's rows, concatenated in process order, with gradients flowing back to each
    process's own rows (the sum of every process's gradient for them)."""

    @staticmethod
    def forward(ctx, local: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        padded = local.new_zeros(max(sizes), *local.shape[1:])
        padded[: len(local)] = local
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous())
        ctx.sizes, ctx.rank = sizes, dist.get_rank()
        return torch.cat([part[:size] for part, size in zip(parts, sizes, strict=True)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None


def gather_rows(accelerator, local: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``(all processes' rows, where this process's rows start)``; differentiable."""
    if accelerator.num_processes == 1:
        return local, 0
    sizes = accelerator.gather(torch.tensor([len(local)], device=local.device)).tolist()
    return _GatherRows.apply(local, sizes), sum(sizes[: accelerator.process_index])


def step_loss_sum(
    accelerator,
    head: TwoTowers,
    output,
    users: torch.Tensor,
    positions: torch.Tensor,
    loss: str,
    temperature: float,
) -> tuple[torch.Tensor, int]:
    """This process's summed ranking loss over its pairs, with the candidates of the whole step:
    every process's items (one softmax over the step's items, as with one process), and each
    pair's other positives anywhere in the step left out. Returns ``(loss sum, pairs)``."""
    vectors, offset = gather_rows(accelerator, output.items[0])
    biases, _ = gather_rows(accelerator, output.items[1].unsqueeze(-1))
    global_positions = positions + offset
    all_users, _ = gather_rows(accelerator, users.unsqueeze(-1).detach())
    all_positions, pair_offset = gather_rows(accelerator, global_positions.unsqueeze(-1).detach())
    exclude = other_positives(all_users.squeeze(-1), all_positions.squeeze(-1), len(vectors))
    exclude = exclude[pair_offset : pair_offset + len(users)]
    scores = head.score_all(output.user, (vectors, biases.squeeze(-1)))
    if loss == "softmax":
        per_pair = LOSSES["softmax"](scores, global_positions, exclude, temperature)
    else:
        per_pair = LOSSES["bpr"](scores, global_positions, exclude)
    return per_pair.sum(), len(users)


def warm_up_ranking_head(
    head: TwoTowers,
    item_text: torch.Tensor,
    users: np.ndarray,
    items: np.ndarray,
    *,
    epochs: int,
    lr: float,
    l2: float,
    loss: str,
    temperature: float,
    seed: int,
    items_per_step: int = 128,
    text_l2: float = 0.0,
    knowledge_l2: float = 0.0,
) -> None:
    """Train the towers on fixed pooled text features with the same loss as the adapted phase.

    Each step samples ``items_per_step`` items and uses all their training pairs, exactly like
    the item-amortised LM phase, but without any LM pass (seconds per epoch).
    """
    generator = torch.Generator().manual_seed(seed)
    groups = ItemGroups(items, len(item_text))
    pair_users = torch.as_tensor(users[groups.order])
    rated = torch.as_tensor(groups.rated())
    optimizer = torch.optim.Adam([p for p in head.parameters() if p.requires_grad], lr=lr)
    head.train()
    for _ in range(epochs):
        for step_items in rated[torch.randperm(len(rated), generator=generator)].split(
            items_per_step
        ):
            rows, positions = groups.rows(step_items.tolist())
            positions = torch.as_tensor(positions)
            u = pair_users[rows]
            vectors = head.items(item_text[step_items], step_items)
            user = head.users(u)
            scores = head.score_all(user, vectors)
            penalty = head.penalty(user, (vectors[0][positions], vectors[1][positions]))
            step_loss = (
                ranking_step_loss(scores, u, positions, loss, temperature).mean() + l2 * penalty
            )
            step_loss = step_loss + ridge(head, text_l2, knowledge_l2)
            optimizer.zero_grad()
            step_loss.backward()
            optimizer.step()


@torch.no_grad()
def target_ranks(
    head: TwoTowers,
    item_text: torch.Tensor,
    users: np.ndarray,
    targets: np.ndarray,
    exclude: torch.Tensor,
    chunk: int = 1024,
) -> torch.Tensor:
    """Full-ranking rank of each user's target item among all items not excluded (P3)."""
    was_training = head.training
    head.eval()
    device = head.reference_parameter().device
    items = head.items(item_text.to(device), torch.arange(len(item_text), device=device))
    ranks = []
    for start in range(0, len(users), chunk):
        u = torch.as_tensor(users[start : start + chunk], device=device)
        scores = head.score_all(head.users(u), items).float().cpu()
        ranks.append(
            rank_of_targets(
                scores, torch.as_tensor(targets[start : start + chunk]), exclude[u.cpu()]
            )
        )
    head.train(was_training)
    return torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long)


def ranking_scores(
    metric, ranks: np.ndarray, k: int, groups: Mapping[str, np.ndarray] | None = None
) -> dict[str, float | int | None]:
    """NDCG@k, HR@k and MRR of the targets' ``ranks`` (the ``ranking`` metric); with ``groups``
    (row masks, e.g. :func:`peftrec.metrics.warm_cold`), also apart for each group."""
    scores = {key: float(v) for key, v in metric.compute(predictions=ranks, k=k).items()}
    if groups is not None:
        scores.update(
            scores_by_group(
                groups,
                lambda rows: metric.compute(predictions=ranks[rows], k=k),
                (f"ndcg@{k}", f"hr@{k}", "mrr"),
            )
        )
    return scores


def headline(scores: Mapping[str, float], k: int) -> dict[str, float]:
    """The ranking metrics a run reports first, by display name: NDCG@k, HR@k, MRR."""
    return {f"NDCG@{k}": scores[f"ndcg@{k}"], f"HR@{k}": scores[f"hr@{k}"], "MRR": scores["mrr"]}
