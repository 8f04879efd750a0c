"""The sequential task's data: each user's history in time order, the training windows over it,
and the collator that batches them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from peftrec.data.blocks import rows_before
from peftrec.models.tokens import pad_batch
from peftrec.tasks.sequential.head import PAD, left_pad


def user_histories(
    users: np.ndarray, items: np.ndarray, timestamps: np.ndarray | None, num_users: int
) -> list[np.ndarray]:
    """Each user's items ordered by (timestamp, row): the rows' order breaks ties."""
    rows = np.arange(len(users))
    order = np.lexsort((rows, timestamps if timestamps is not None else rows, users))
    starts = np.searchsorted(users[order], np.arange(num_users + 1))
    return [items[order[starts[u] : starts[u + 1]]] for u in range(num_users)]


class RunHistories(NamedTuple):
    """A run's histories, each a user's items in time order: what trains (``trained``, aligned
    with ``train``: which positions are targets; None: all), and the histories before each
    validation and test target. With timestamps, ``times`` holds each training item's time
    (aligned with ``train``), ``moments`` the validation and test targets' times, ``ages`` the
    seconds from each of their histories' last event to them (0: an empty history), and
    ``seen`` the rows a recency term counts, in training and validation, and then in the test
    (what the model line has seen: P3's training rows, and for the test the validation rows
    too, which test histories read; p4's rows of blocks 1..t), which a saved model's app
    counts too (its seen interactions, and those it is given)."""

    train: list[np.ndarray]
    trained: list[np.ndarray] | None
    valid: list[np.ndarray]
    test: list[np.ndarray]
    times: list[np.ndarray] | None = None
    moments: tuple[np.ndarray, np.ndarray] | None = None
    ages: tuple[np.ndarray, np.ndarray] | None = None
    seen: tuple[np.ndarray, np.ndarray] | None = None


def run_histories(data) -> RunHistories:
    """The histories of a run's data (:class:`~peftrec.training.run_data.RunData`).

    P3: each user's training items; the validation item comes after them, the test item after
    them and the validation item. p4: each user's items of blocks 1..t that the model line has
    learned from, as inputs, the current training rows (block t, with ``window=new`` and any
    replay; all of them on a retrain) as targets; a validation or test target reads every item
    its user had before it in blocks 1..t, held-out shares included (none: a new user).
    """
    train, valid, test = data.train, data.valid, data.test
    num_users = len(data.dataset.user_ids)
    inter = data.dataset.interactions
    timed = inter.timestamps is not None
    moments = (valid.timestamps, test.timestamps) if timed else None
    if data.history_rows is None:
        rows = user_histories(train.users, np.arange(len(train)), train.timestamps, num_users)
        histories = [train.items[r] for r in rows]
        valid_item = dict(zip(valid.users.tolist(), valid.items.tolist(), strict=True))
        ages = None
        if timed:
            last = np.array([train.timestamps[r[-1]] if len(r) else np.nan for r in rows])
            valid_time = dict(zip(valid.users.tolist(), valid.timestamps.tolist(), strict=True))
            test_last = np.array([valid_time.get(u, last[u]) for u in test.users.tolist()])
            ages = tuple(
                np.nan_to_num(t - before, nan=0.0)
                for t, before in (
                    (valid.timestamps, last[valid.users]),
                    (test.timestamps, test_last),
                )
            )
        return RunHistories(
            histories,
            None,
            [histories[u] for u in valid.users],
            [
                np.append(histories[u], valid_item[u]) if u in valid_item else histories[u]
                for u in test.users
            ],
            [train.timestamps[r] for r in rows] if timed else None,
            moments,
            ages,
            (data.rows.train, np.concatenate([data.rows.train, data.rows.valid]))
            if timed
            else None,
        )
    learned, before = data.history_rows
    mine = user_histories(inter.users[learned], learned, inter.timestamps[learned], num_users)
    valid_rows, test_rows = (rows_before(data.dataset, before, t) for t in data.rows[1:])
    return RunHistories(
        [inter.items[r] for r in mine],
        [np.isin(r, data.rows.train) for r in mine],
        [inter.items[r] for r in valid_rows],
        [inter.items[r] for r in test_rows],
        [inter.timestamps[r] for r in mine],
        moments,
        tuple(
            history_ages(inter.timestamps, targets, rows)
            for targets, rows in ((data.rows.valid, valid_rows), (data.rows.test, test_rows))
        ),
        (np.asarray(before), np.asarray(before)),
    )


def history_ages(times: np.ndarray, targets: np.ndarray, histories: list) -> np.ndarray:
    """Seconds from the last row of each target's history (rows, oldest first) to the target;
    0 for an empty history."""
    return np.array(
        [
            times[t] - times[h[-1]] if len(h) else 0.0
            for t, h in zip(targets, histories, strict=True)
        ],
        dtype=np.float64,
    )


def training_windows(
    histories: Sequence[np.ndarray],
    max_history: int,
    trained: Sequence[np.ndarray] | None = None,
) -> tuple[list, list]:
    """Inputs and next-item targets of each history's last ``max_history + 1`` items; with
    ``trained`` (per history, which positions are targets), the others' targets are ``PAD``."""
    inputs, targets = [], []
    for u, history in enumerate(histories):
        kept = history[-(max_history + 1) :]
        inputs.append(kept[:-1])
        target = kept[1:]
        if trained is not None:
            target = np.where(trained[u][-len(kept) :][1:], target, PAD)
        targets.append(target)
    return inputs, targets


def left_pad_times(times: Sequence[np.ndarray], width: int) -> torch.Tensor:
    """Float64 ``(len(times), width)``: each row's last ``width`` times right-aligned, 0 before
    (where the targets are ``PAD``), as :func:`~peftrec.tasks.sequential.head.left_pad` aligns
    the items."""
    out = torch.zeros(len(times), width, dtype=torch.float64)
    for row, values in enumerate(times):
        kept = np.asarray(values, dtype=np.float64)[-width:] if width else values[:0]
        if len(kept):
            out[row, width - len(kept) :] = torch.as_tensor(kept)
    return out


class SequenceCollator:
    """A list of user rows -> their left-padded training windows, and (``fresh`` items per step,
    for an adapted backbone) the texts of up to that many of the step's distinct items, drawn by
    a generator seeded by the batch itself, for the straight-through LM pass."""

    def __init__(
        self,
        histories: Sequence[np.ndarray],
        max_history: int,
        token_lists: Sequence[Sequence[int]],
        pad_id: int,
        fresh: int = 0,
        seed: int = 0,
        trained: Sequence[np.ndarray] | None = None,
        first_items: bool = False,
        times: Sequence[np.ndarray] | None = None,
    ):
        self.inputs, self.targets = training_windows(histories, max_history, trained)
        # with times (a recency term), each target's moment: the time of the target itself
        self.moments = (
            [np.asarray(t)[-(max_history + 1) :][1:] for t in times] if times is not None else None
        )
        self.ages = (  # seconds from each target's previous item to it
            [np.diff(np.asarray(t, dtype=np.float64)[-(max_history + 1) :]) for t in times]
            if times is not None
            else None
        )
        self.first_times = (
            [float(t[0]) if len(t) else 0.0 for t in times] if times is not None else None
        )
        # with first_items, each user's first item (when trained) is a target after no history
        self.firsts = [
            int(h[0]) if first_items and len(h) and (trained is None or trained[u][0]) else PAD
            for u, h in enumerate(histories)
        ]
        self.max_history, self.token_lists, self.pad_id = max_history, token_lists, pad_id
        self.fresh, self.seed = fresh, seed

    def users_with_targets(self) -> list[int]:
        return [
            u
            for u, t in enumerate(self.targets)
            if (np.asarray(t) != PAD).any() or self.firsts[u] != PAD
        ]

    def __call__(self, users: list[int]) -> dict[str, torch.Tensor]:
        batch = {
            "history": left_pad([self.inputs[u] for u in users], self.max_history),
            "targets": left_pad([self.targets[u] for u in users], self.max_history),
            "first": torch.as_tensor([self.firsts[u] for u in users], dtype=torch.long),
        }
        if self.moments is not None:
            batch["moments"] = left_pad_times(
                [self.moments[u] for u in users], batch["targets"].size(1)
            )
            batch["ages"] = left_pad_times([self.ages[u] for u in users], batch["targets"].size(1))
            batch["first_moments"] = torch.as_tensor(
                [self.first_times[u] for u in users], dtype=torch.float64
            )
        if self.fresh:
            step_items = np.unique(
                np.concatenate([self.inputs[u] for u in users] + [self.targets[u] for u in users])
            )
            step_items = np.union1d(step_items, [self.firsts[u] for u in users])
            step_items = step_items[step_items != PAD]
            rng = np.random.default_rng((self.seed, *users))
            chosen = np.sort(rng.permutation(step_items)[: self.fresh])
            batch["input_ids"], batch["attention_mask"] = pad_batch(
                [self.token_lists[i] for i in chosen], self.pad_id
            )
            batch["item_index"] = torch.as_tensor(chosen, dtype=torch.long)
        return batch
