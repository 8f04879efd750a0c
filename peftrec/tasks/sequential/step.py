"""The sequential task's step: the next-item loss, full-ranking evaluation, and the item table an
epoch scores against."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from peftrec.metrics import rank_of_targets
from peftrec.tasks.sequential.head import SequenceOutput, SequentialHead, history_states


def sequence_loss(
    output: SequenceOutput,
    loss: str = "softmax",
    negatives: int = 0,
    popularity: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Summed next-item loss over the step's positions.

    ``softmax``: cross-entropy against the whole catalogue. ``sampled``: against the target and
    ``negatives`` items drawn from ``popularity`` (shared by the step), with the log-Q correction
    that makes the sampled softmax an unbiased stand-in for the full one.
    """
    if loss == "softmax":
        return F.cross_entropy(output.logits, output.targets, reduction="sum")
    q = popularity / popularity.sum()
    sampled = torch.multinomial(q, negatives, replacement=True, generator=generator).to(
        output.logits.device
    )
    logits = output.logits[:, sampled] - torch.log(negatives * q[sampled].to(output.logits))
    logits = logits.masked_fill(sampled[None, :] == output.targets[:, None], float("-inf"))
    positive = output.logits.gather(1, output.targets[:, None])
    return F.cross_entropy(
        torch.cat([positive, logits], 1),
        output.targets.new_zeros(len(output.targets)),
        reduction="sum",
    )


@torch.no_grad()
def next_item_ranks(
    head: SequentialHead,
    table: torch.Tensor,
    histories: Sequence[Sequence[int]],
    targets: np.ndarray,
    exclude: torch.Tensor,
    moments: np.ndarray | None = None,
    ages: np.ndarray | None = None,
) -> torch.Tensor:
    """Full-ranking rank of each history's next item among all items not excluded (P3); a head
    with recency reads the popularity of each target's ``moments`` (its time) and the
    ``ages`` of the histories (seconds since their last event)."""
    was_training = head.training
    head.eval()
    items = head.items(table, torch.arange(len(table), device=table.device))
    states = history_states(head, items, histories)
    ranks = []
    for start in range(0, len(histories), 1024):
        chunk = states[start : start + 1024]
        scores = head.score_states(chunk, items)
        if head.recency_gate is not None:
            when, age = (
                torch.as_tensor(a[start : start + 1024], dtype=torch.float64, device=chunk.device)
                for a in (moments, ages)
            )
            scores = scores + head.recency_scores(chunk, when, age)
        scores = scores.float().cpu()
        ranks.append(
            rank_of_targets(
                scores,
                torch.as_tensor(targets[start : start + 1024]),
                exclude[start : start + 1024],
            )
        )
    head.train(was_training)
    return torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long)


class CatalogueTable:
    """The pooled text of every item a training epoch scores against, saved in checkpoints so a
    resumed run uses the very table the interrupted one did."""

    def __init__(self, table: torch.Tensor | None = None):
        self.table = table

    def state_dict(self) -> dict:
        return {"table": self.table}

    def load_state_dict(self, state: dict) -> None:
        self.table = state["table"]
