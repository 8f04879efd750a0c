"""Sequential recommendation: a user is the items they interacted with, in time order.

:class:`SequentialHead` is the item tower of the two-tower heads (pooled LM text, optional item
ID, ID dropout) under a SASRec-style :class:`HistoryEncoder`: causal self-attention over a
history's item vectors, learned positions, dropout and layer norm. The state after each position
scores every catalogue item for the next one (``state . q_i + b_i``), so training predicts the
next item at every position, and a user's state is computed from their history whenever asked:
known users, users with new interactions, anonymous sessions, with no retraining.

A training step scores the full catalogue with every candidate's vector equally fresh: the item
vectors are projected from one table of pooled text features each step. With a frozen backbone
that table is exact; with an adapted one it is refreshed once per epoch, and the step's own items
are encoded again with gradients and swapped in straight-through (the table's values, the fresh
pass's gradients), so the LM learns while every candidate keeps the same staleness.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from peftrec.models.recency import DAY, HALF_LIVES, RecencyTable
from peftrec.models.towers import TwoTowers
from peftrec.models.traits import Traits

PAD = -1  # an empty position in a left-padded history


def left_pad(histories: Sequence[Sequence[int]], length: int) -> torch.Tensor:
    """``(len(histories), width)`` item rows, each history's last ``length`` items right-aligned,
    ``PAD`` before them; width is the longest kept history (at least 1)."""
    width = max(1, min(length, max((len(h) for h in histories), default=1)))
    out = torch.full((len(histories), width), PAD, dtype=torch.long)
    for row, history in enumerate(histories):
        kept = list(history)[-width:]
        if kept:
            out[row, width - len(kept) :] = torch.as_tensor(kept, dtype=torch.long)
    return out


class Block(nn.Module):
    """Pre-norm causal self-attention and a position-wise feed-forward layer, with residuals."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.attention_norm, self.feed_norm = nn.LayerNorm(dim), nn.LayerNorm(dim)
        # no dropout on the attention weights: it cost ~20% of a step and did not help on P3
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.feed = nn.Sequential(
            nn.Linear(dim, dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim, dim)
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, blocked: torch.Tensor) -> torch.Tensor:
        h = self.attention_norm(x)
        x = x + self.dropout(self.attention(h, h, h, attn_mask=blocked, need_weights=False)[0])
        return x + self.dropout(self.feed(self.feed_norm(x)))


class HistoryEncoder(nn.Module):
    """SASRec: the user's state after each position of a left-padded history of item vectors.

    Positions count back from the last item (the most recent is always position
    ``max_length - 1``), so a state means the same whatever the history's length.
    """

    def __init__(
        self, dim: int, max_length: int, blocks: int = 2, heads: int = 1, dropout: float = 0.2
    ):
        super().__init__()
        self.max_length, self.heads = max_length, heads
        self.positions = nn.Embedding(max_length, dim)
        nn.init.normal_(self.positions.weight, std=0.02)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(dim, heads, dropout) for _ in range(blocks))
        self.norm = nn.LayerNorm(dim)

    def forward(self, item_vectors: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """States ``(users, width, dim)`` for ``history`` (item rows into ``item_vectors``, ``PAD``
        for none); a padded position's state is zero."""
        width = history.size(1)
        if width > self.max_length:
            raise ValueError(
                f"history of {width} items is longer than the encoder's {self.max_length}; "
                "keep the last ones (left_pad does)"
            )
        real = history != PAD
        x = item_vectors[history.clamp(min=0)] * (
            math.sqrt(item_vectors.size(-1)) * real.unsqueeze(-1)
        )
        x = self.dropout(x + self.positions.weight[self.max_length - width :]) * real.unsqueeze(-1)
        causal = torch.ones(width, width, dtype=torch.bool, device=history.device).triu(1)
        blocked = causal | ~real[:, None, :]  # no future item, no padding
        blocked = blocked & ~torch.eye(
            width, dtype=torch.bool, device=history.device
        )  # pads see themselves
        blocked = blocked.repeat_interleave(self.heads, dim=0)
        for block in self.blocks:
            x = block(x, blocked) * real.unsqueeze(-1)
        return self.norm(x) * real.unsqueeze(-1)


class SequenceOutput(NamedTuple):
    logits: torch.Tensor  # (positions, items): every catalogue item scored at every real position
    targets: torch.Tensor  # (positions,) the next item at each
    penalty: torch.Tensor  # mean L2 of the targets' item vectors and the states
    source: torch.Tensor  # L_S of the step (0 without one)


class SequentialHead(TwoTowers):
    """The item tower of :class:`~peftrec.models.towers.TwoTowers` under a :class:`HistoryEncoder`.

    It has no user table: a user is their history. ``text_norm`` standardises each pooled text
    dimension with the catalogue's statistics (fitted before training, saved with the head).
    """

    traits = Traits(user="history")

    def __init__(
        self,
        text_dim: int,
        num_items: int,
        dim: int = 64,
        *,
        max_history: int = 50,
        blocks: int = 2,
        heads: int = 1,
        history_dropout: float = 0.2,
        text_norm: bool = False,
        empty_state: bool = False,
        recency: bool = False,
        members: int = 1,
        num_users: int = 0,
        **towers,
    ):
        if num_users:
            raise ValueError("a sequential head has no user table: num_users must be 0")
        if members < 1 or (members > 1 and recency):
            raise ValueError(
                f"members={members}: at least 1, and one alone with recency (its gate reads "
                "one state)"
            )
        # members: an ensemble in one head; member k owns the k-th dim-slice of every item
        # vector and an encoder of its own, and trains on its own loss (see ``step``)
        super().__init__(text_dim, 0, num_items, dim * members, **towers)
        self.members, self.member_dim = members, dim
        self.encoder = HistoryEncoder(dim, max_history, blocks, heads, history_dropout)
        self.more_encoders = nn.ModuleList(
            HistoryEncoder(dim, max_history, blocks, heads, history_dropout)
            for _ in range(members - 1)
        )
        self.text_norm = text_norm
        # the state of an empty history (a new user): learned from users' first items, or zero
        self.start = nn.Parameter(torch.zeros(dim * members)) if empty_state else None
        # what is popular now, weighed per state (peftrec.models.recency); zero at the start
        # its input: the state and how old the history is (log days since its last event)
        self.recency_gate = nn.Linear(dim + 1, 2 * len(HALF_LIVES)) if recency else None
        if recency:
            nn.init.zeros_(self.recency_gate.weight)
            nn.init.zeros_(self.recency_gate.bias)
        self.recent: RecencyTable | None = None  # the seen events' counts: data, not weights
        self.register_buffer("text_mean", torch.zeros(text_dim))
        self.register_buffer("text_scale", torch.ones(text_dim))

    @torch.no_grad()
    def fit_text_norm(self, text: torch.Tensor) -> None:
        """Per-dimension mean and standard deviation of the catalogue's pooled texts."""
        if self.text_norm:
            self.text_mean.copy_(text.mean(0))
            self.text_scale.copy_(text.std(0).clamp(min=1e-6))

    def items(
        self,
        text: torch.Tensor,
        index: torch.Tensor | None = None,
        facts: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.text_norm:
            text = (text - self.text_mean) / self.text_scale
        return super().items(text, index, facts)

    def states(
        self, items: tuple[torch.Tensor, torch.Tensor], history: torch.Tensor
    ) -> torch.Tensor:
        """States after each position; with several members, their states side by side over
        their number, so that a state's dot product with an item vector is the mean of the
        members' (the item bias is shared)."""
        if self.members == 1:
            return self.encoder(items[0], history)
        parts = items[0].split(self.member_dim, -1)
        encoders = (self.encoder, *self.more_encoders)
        states = [encoder(part, history) for encoder, part in zip(encoders, parts, strict=True)]
        return torch.cat(states, -1) / self.members

    def member_logits(
        self, states: torch.Tensor, items: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        """``(members * states, items)``: each member's own scores (``members`` blocks of rows),
        which each member trains on, so that the members learn apart, as an ensemble's do."""
        vectors = items[0].split(self.member_dim, -1)
        parts = (states * self.members).split(self.member_dim, -1)
        return torch.cat([s @ v.T + items[1] for s, v in zip(parts, vectors, strict=True)])

    @property
    def history_length(self) -> int:
        """How many of a history's last items the encoder reads."""
        return self.encoder.max_length

    def history_users(
        self, items: tuple[torch.Tensor, torch.Tensor], histories: Sequence[Sequence[int]]
    ) -> torch.Tensor:
        """Each history's user vector: the state after its last item (:func:`history_states`)."""
        return history_states(self, items, histories)

    def score_states(
        self, states: torch.Tensor, items: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        """``(states, items)`` scores: state . q_i + b_i."""
        return states @ items[0].T + items[1]

    def recency_scores(
        self, states: torch.Tensor, moments: torch.Tensor, ages: torch.Tensor
    ) -> torch.Tensor:
        """``(states, items)``: each state's weights on the recent-popularity features of every
        item at its moment (seconds, float64), for a head with recency. The weights read the
        state and its history's age (seconds from its last event to the moment; 0: empty), so
        a stale history can lean on what is popular now and a fresh one on itself."""
        if self.recent is None:
            raise ValueError(
                "this sequential head weighs recent popularity (sequence.recency): give it the "
                "seen events first (set_recency)"
            )
        features = self.recent.features(moments.to(self.recent.counts.device))
        age = torch.log1p(ages.clamp(min=0).to(states.dtype) / DAY).unsqueeze(-1)
        weights = self.recency_gate(torch.cat([states, age], -1))
        return torch.einsum("pif,pf->pi", features.to(states.dtype), weights)

    def set_recency(self, table: RecencyTable | None) -> None:
        """The counts of the events the model has seen, read at every moment it predicts."""
        self.recent = table

    def score_all(
        self, user: tuple[torch.Tensor, torch.Tensor], items: tuple[torch.Tensor, torch.Tensor]
    ):
        """As the two-tower heads: ``user`` is (states, zeros)."""
        return self.score_states(user[0], items)

    def score(
        self, user: tuple[torch.Tensor, torch.Tensor], item: tuple[torch.Tensor, torch.Tensor]
    ):
        return item[1] + (user[0] * item[0]).sum(-1)

    def step(
        self,
        text: torch.Tensor | None,
        item_index: torch.Tensor | None,
        source: torch.Tensor,
        history: torch.Tensor,
        targets: torch.Tensor,
        table: torch.Tensor,
        first: torch.Tensor | None = None,
        moments: torch.Tensor | None = None,
        ages: torch.Tensor | None = None,
        first_moments: torch.Tensor | None = None,
    ) -> SequenceOutput:
        """One training step's outputs: next-item logits over the catalogue at every real position
        (and, with a learned empty state, for each user's ``first`` item after no history).

        ``table`` holds the pooled text of every item (no gradient). With ``text`` (the fresh
        encodings of the items ``item_index``, by the LM with gradients), those rows are swapped
        in straight-through: values from the table, gradients through the fresh pass.
        ``source``: the step's L_S.
        """
        if text is not None:
            table = table.index_put((item_index,), table[item_index] + text - text.detach())
        text = table
        index = torch.arange(len(table), device=table.device)
        items = self.items(text, index)
        states = self.states(items, history)
        real = targets != PAD
        states, next_items = states[real], targets[real]
        when = moments[real] if moments is not None else None
        if moments is not None and ages is None:
            ages = torch.zeros_like(moments)
        age = ages[real] if ages is not None else None
        if self.start is not None and first is not None:
            starting = first != PAD
            states = torch.cat([states, self.start.expand(int(starting.sum()), -1)])
            next_items = torch.cat([next_items, first[starting]])
            if when is not None:  # after no history: age 0
                when = torch.cat([when, first_moments[starting]])
                age = torch.cat([age, torch.zeros_like(first_moments[starting])])
        penalty = states.square().sum(-1).mean() + items[0][next_items].square().sum(-1).mean()
        if self.members > 1:  # each member on its own loss
            logits = self.member_logits(states, items)
            return SequenceOutput(logits, next_items.repeat(self.members), penalty, source)
        logits = self.score_states(states, items)
        if self.recency_gate is not None:  # the moment of each prediction: its target's time
            logits = logits + self.recency_scores(states, when, age)
        return SequenceOutput(logits, next_items, penalty, source)


@torch.no_grad()
def history_states(
    head: SequentialHead,
    items: tuple[torch.Tensor, torch.Tensor],
    histories: Sequence[Sequence[int]],
    batch_size: int = 256,
) -> torch.Tensor:
    """The state after each history's last item, ``(len(histories), dim)``; for an empty one
    the head's learned empty state, or zero."""
    was_training = head.training
    head.eval()
    out = []
    for start in range(0, len(histories), batch_size):
        padded = left_pad(histories[start : start + batch_size], head.encoder.max_length)
        padded = padded.to(items[0].device)
        last = head.states(items, padded)[:, -1]
        if head.start is not None:  # an empty history's state is the learned one
            last = torch.where((padded[:, -1] == PAD)[:, None], head.start, last)
        out.append(last)
    head.train(was_training)
    return torch.cat(out) if out else items[0].new_zeros(0, head.dim)
