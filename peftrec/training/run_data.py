"""A run's data, loaded the same way by every recipe: the dataset split by ``data.protocol``,
checked, with the texts the model reads and, for a knowledge model, the items' facts.

:func:`load_run_data` gives a :class:`RunData`; :func:`item_facts` finds the items' facts.
Both are re-exported by :mod:`peftrec.training.recipe`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from peftrec.data import (
    DataError,
    Interactions,
    RecDataset,
    Split,
    check_splits,
    load_data,
    split_rows,
)
from peftrec.data.blocks import p4_history, p4_ranking_split, p4_split
from peftrec.data.bookcrossing import book_facts
from peftrec.data.knowledge import ItemKnowledge, load_item_knowledge, ml100k_knowledge
from peftrec.data.preference import PreferenceSplit, compact, run_records
from peftrec.models.knowledge_tower import ML100K_GROUPS, KnowledgeVocabulary
from peftrec.tasks import Task

logger = logging.getLogger("peftrec.training.recipe")  # logged as the recipe's set-up


@dataclass
class RunData:
    """A run's data: the dataset, its splits by protocol and the texts the model reads."""

    dataset: RecDataset
    train: Interactions
    valid: Interactions
    test: Interactions
    item_texts: list[str]
    user_texts: list[str] | None = None
    records: PreferenceSplit | None = None
    """A preference run's records (train, valid, test); the splits are their targets' rows."""
    knowledge: ItemKnowledge | None = None
    """The items' facts (``model.knowledge``), and how they become entity rows:"""
    vocabulary: KnowledgeVocabulary | None = None
    group_map: dict[str, str] | None = None
    rows: Split | None = None
    """The splits' row indices into ``dataset.interactions`` (after ``data.train_fraction``)."""
    history_rows: tuple[np.ndarray, np.ndarray] | None = None
    """p4: the row indices of ``learned`` and ``before_test``."""
    known_users: np.ndarray = field(init=False)
    """Boolean per user: has interactions the model line learned from (warm)."""
    known_items: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        learned = self.train if self.learned is None else self.learned
        self.known_users = np.bincount(learned.users, minlength=len(self.dataset.user_ids)) > 0
        self.known_items = np.bincount(learned.items, minlength=len(self.dataset.item_ids)) > 0

    @cached_property
    def learned(self) -> Interactions | None:
        """p4: the training rows of blocks 1..t, what the model line has learned (a warm start's
        parents included); None: the training split."""
        return None if self.history_rows is None else self._subset(self.history_rows[0])

    @cached_property
    def before_test(self) -> Interactions | None:
        """p4: every row of blocks 1..t, what a user has interacted with before the test block
        (a ranking excludes it); None: the training and validation splits."""
        return None if self.history_rows is None else self._subset(self.history_rows[1])

    def _subset(self, rows: np.ndarray) -> Interactions:
        return self.dataset.interactions.subset(rows)


def load_run_data(cfg, task: Task) -> RunData:
    """Load, split by ``data.protocol`` (subsampled by ``data.train_fraction``), check,
    render texts."""
    dataset = load_data(cfg.data)
    records = history_rows = None
    if task.traits.labelled:  # the run reads records: (labelled history, target, label)
        pref = cfg.preference
        records = run_records(
            dataset, cfg.data.protocol, pref.records, cfg.data.train_records, cfg.data.seed
        )
        if cfg.train.epochs == 0:  # zero-shot: no record trains, none is read
            records = PreferenceSplit(records.train.subset(np.arange(0)), *records[1:])
        if cfg.data.protocol == "tallrec-book":  # encode only the books this run's records name
            dataset, records = compact(dataset, records)
        split = Split(*(part.rows for part in records))
    elif cfg.data.protocol == "p4":
        p4 = p4_split if task.traits.ratings else p4_ranking_split
        split = p4(dataset, cfg.data.block, cfg.data.window, cfg.data.replay, seed=cfg.data.seed)
        history_rows = p4_history(dataset, cfg.data.block)
    else:
        split = split_rows(dataset, cfg.data.protocol, seed=cfg.data.seed)
    if cfg.data.train_fraction < 1.0 and records is None:
        keep = np.random.default_rng(cfg.data.seed).random(len(split.train)) < (
            cfg.data.train_fraction
        )
        split = Split(split.train[keep], split.valid, split.test)
    train, valid, test = (
        dataset.interactions.subset(rows) for rows in (split.train, split.valid, split.test)
    )
    parts = {"train": train, "validation": valid, "test": test}
    if records is not None and cfg.train.epochs == 0:
        del parts["train"]  # zero-shot
    check_splits(dataset, cfg.data.protocol, parts, cfg.data.train_fraction)
    item_texts = dataset.item_texts(cfg.data.item_template)
    user_texts = dataset.user_texts(cfg.data.user_template) if cfg.model.user_text else None
    if cfg.model.user_text and user_texts is None:
        raise DataError(
            f"model.user_text=true needs user profile fields, and dataset {dataset.name!r} has "
            "none (data.users names a users file)"
        )
    logger.info(
        "%s %s: %d train / %d valid / %d test interactions, %d users, %d items",
        dataset.name,
        cfg.data.protocol,
        len(train),
        len(valid),
        len(test),
        len(dataset.user_ids),
        len(dataset.item_ids),
    )
    data = RunData(
        dataset,
        train,
        valid,
        test,
        item_texts,
        user_texts,
        records=records,
        rows=split,
        history_rows=history_rows,
    )
    if cfg.model.knowledge != "none":
        data.knowledge, data.group_map = item_facts(cfg.data, dataset)
        data.vocabulary = KnowledgeVocabulary.build(
            data.knowledge,
            train.items,
            relations=cfg.model.knowledge,
            group_map=data.group_map,
            min_count=cfg.model.knowledge_min_count,
        )
        linked = data.knowledge.linked_items(len(dataset.item_ids))
        logger.info(
            "knowledge (%s): %d facts of %d items; %d groups, %d entities with rows",
            cfg.model.knowledge,
            len(data.knowledge),
            int(linked.sum()),
            len(data.vocabulary.groups),
            len(data.vocabulary.entities),
        )
    return data


def item_facts(data_cfg, dataset: RecDataset) -> tuple[ItemKnowledge, dict[str, str] | None]:
    """The items' facts and the grouping of their relations: ml-100k's Freebase graph through
    peftrec's repaired link (relations grouped by kind), or ``data.item_knowledge`` (each
    relation its own group)."""
    if data_cfg.item_knowledge:
        return load_item_knowledge(data_cfg.item_knowledge, dataset.item_ids), None
    if data_cfg.dataset == "book-crossing":
        return book_facts(dataset), None
    if data_cfg.dataset != "ml-100k":
        raise DataError(
            f"model.knowledge needs the items' facts: data.item_knowledge names a file of "
            f"(item_id, relation, entity) rows for dataset {dataset.name!r}"
        )
    return ml100k_knowledge(dataset.item_ids), ML100K_GROUPS
