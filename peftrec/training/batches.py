"""Small building blocks for the training recipes: item-amortised batches, warm-up, evaluation."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Sampler

from peftrec.data import DataError
from peftrec.models.tokens import pad_batch

logger = logging.getLogger(__name__)


class ItemShuffler(Sampler[int]):
    """Items in a new random order each epoch (seeded by ``seed`` and ``set_epoch``)."""

    def __init__(self, items: Sequence[int], seed: int = 0):
        self.items = np.asarray(items, dtype=np.int64)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng((self.seed, self.epoch))
        return iter(rng.permutation(self.items).tolist())

    def __len__(self) -> int:
        return len(self.items)


class LengthBucketBatches(Sampler[list[int]]):
    """Batches of ``batch_size`` distinct items whose texts have similar lengths.

    Items come from ``sampler`` (so Accelerate can reach ``sampler.set_epoch``); each window of
    ``batch_size * window`` items is sorted by token length and cut into batches, and the batch
    order is shuffled again, so padding stays small without a fixed batch order.
    """

    def __init__(
        self, sampler: ItemShuffler, lengths: Sequence[int], batch_size: int, window: int = 16
    ):
        self.sampler = sampler
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.window = window
        self.drop_last = False

    def __iter__(self) -> Iterator[list[int]]:
        order = list(self.sampler)
        span = self.batch_size * self.window
        batches = []
        for start in range(0, len(order), span):
            chunk = sorted(order[start : start + span], key=lambda i: self.lengths[i])
            batches += [
                chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)
            ]
        rng = np.random.default_rng((self.sampler.seed, self.sampler.epoch, 1))
        return iter([batches[i] for i in rng.permutation(len(batches))])

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)


class ItemGroups:
    """Interactions grouped by item, the core of item-amortised batching: the rows of item ``i``
    are ``order[offsets[i]:offsets[i + 1]]`` (file order within an item)."""

    def __init__(self, items: np.ndarray, num_items: int):
        self.order = np.argsort(items, kind="stable")
        counts = np.bincount(items, minlength=num_items)
        self.offsets = np.concatenate([[0], np.cumsum(counts)])

    def rated(self) -> list[int]:
        """The items that have interactions."""
        return np.flatnonzero(np.diff(self.offsets) > 0).tolist()

    def rows(self, batch: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, positions)``: every interaction of the batch's items (positions in
        ``self.order``), and for each the position of its item within ``batch``."""
        spans = [np.arange(self.offsets[i], self.offsets[i + 1]) for i in batch]
        positions = np.repeat(np.arange(len(batch)), [len(r) for r in spans])
        return (np.concatenate(spans) if spans else np.zeros(0, dtype=np.int64)), positions


class ItemRatingsCollator:
    """Turns a list of item indices into one LM batch plus every training rating of those items.

    With ``negatives``, that many other random items join the LM batch as extra candidates
    (for ranking losses); no rating points at them. They are drawn from a generator seeded by
    the batch itself, so a batch always gets the same negatives.
    """

    def __init__(
        self,
        token_lists: Sequence[Sequence[int]],
        users: np.ndarray,
        items: np.ndarray,
        ratings: np.ndarray,
        pad_id: int,
        negatives: int = 0,
        seed: int = 0,
    ):
        self.token_lists = token_lists
        self.pad_id = pad_id
        self.negatives = negatives
        self.seed = seed
        self.groups = ItemGroups(items, len(token_lists))
        self.users = torch.as_tensor(users[self.groups.order], dtype=torch.long)
        self.ratings = torch.as_tensor(ratings[self.groups.order], dtype=torch.float32)

    def items_with_ratings(self) -> list[int]:
        return self.groups.rated()

    def __call__(self, batch: list[int]) -> dict[str, torch.Tensor]:
        rows, positions = self.groups.rows(batch)
        if self.negatives:
            rng = np.random.default_rng((self.seed, *batch))
            others = np.setdiff1d(np.arange(len(self.token_lists)), batch)
            batch = [
                *batch,
                *rng.choice(others, min(self.negatives, len(others)), replace=False).tolist(),
            ]
        input_ids, attention_mask = pad_batch([self.token_lists[i] for i in batch], self.pad_id)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "item_index": torch.as_tensor(batch, dtype=torch.long),
            "users": self.users[rows],
            "positions": torch.as_tensor(positions, dtype=torch.long),
            "ratings": self.ratings[rows],
        }


def peak_memory_mib() -> float:
    """Peak memory of this process: CUDA's allocator peak on a GPU, else the maximum RSS."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class EarlyStopping:
    """Tracks the best validation score (lower is better) and keeps a copy of its weights.

    Only what can change is copied: trainable parameters and buffers, not the frozen backbone.
    ``state_dict``/``load_state_dict`` let ``accelerator.register_for_checkpointing`` save it.
    """

    patience: int
    best: float = math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    state: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def update(self, score: float, epoch: int, model: torch.nn.Module) -> bool:
        """Record ``score``; returns True when training should stop."""
        if score < self.best:
            self.best, self.best_epoch, self.bad_epochs = score, epoch, 0
            keep = {n for n, p in model.named_parameters() if p.requires_grad} | {
                n for n, _ in model.named_buffers()
            }
            self.state = {k: v.detach().clone() for k, v in model.state_dict().items() if k in keep}
        else:
            self.bad_epochs += 1
        return self.bad_epochs >= self.patience

    def restore(self, model: torch.nn.Module) -> None:
        if self.state:
            unexpected = model.load_state_dict(self.state, strict=False).unexpected_keys
            if unexpected:
                raise KeyError(
                    f"EarlyStopping.restore: weights {unexpected[:3]} are not in the model"
                )

    def state_dict(self) -> dict:
        return {
            "patience": self.patience,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "state": self.state,
        }

    def load_state_dict(self, state: dict) -> None:
        for name, value in state.items():
            setattr(self, name, value)


class SplitBatches(Sampler[list[int]]):
    """Each item batch cut into ``parts`` interleaved pieces, one per process, in a row.

    Accelerate hands the k-th batch a sampler yields to process ``k % parts``, so process p trains
    on piece p of every batch and a step covers the same items as with one process. Pieces vary
    in size (``batch_size = None``), so Accelerate neither drops nor pads them. A batch with fewer
    items than processes (a short last batch) is merged into the one before it.
    """

    batch_size = None
    drop_last = False

    def __init__(self, batches: LengthBucketBatches, parts: int):
        self.batches = batches
        self.parts = parts
        self.sampler = batches.sampler  # what DataLoader.set_epoch reaches
        if len(batches.sampler) < parts:
            raise DataError(
                f"only {len(batches.sampler)} items have training ratings, fewer than the "
                f"{parts} processes; train with fewer processes"
            )

    def steps(self) -> list[list[int]]:
        steps = [list(batch) for batch in self.batches]
        for k in reversed(range(len(steps))):
            if len(steps[k]) < self.parts and len(steps) > 1:
                small = steps.pop(k)
                steps[max(k - 1, 0)] += small
        return steps

    def __iter__(self):
        for batch in self.steps():
            yield from (batch[p :: self.parts] for p in range(self.parts))

    def __len__(self) -> int:
        return len(self.steps()) * self.parts
