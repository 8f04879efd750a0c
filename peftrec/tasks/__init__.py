"""The tasks peftrec trains, in one place: what each brings.

A task is a folder (``peftrec/tasks/<task>/``: its head, its config section with its own
``conflicts``, its data and step where it has them), a recipe that owns its training loop, and one
entry in :data:`TASKS`: the head class, the recipe's config schema and file, the protocols it is
evaluated on, its metric module, and the numbers of ``metrics.json`` the benchmarks report (the
headline first). To add a task, copy ``tasks/rating/`` and add its entry.

A head says what it is through its :class:`~peftrec.models.traits.Traits` (what a user is, whether
its scores are ratings, whether it reads a pair as one text); the rest of peftrec (assembly,
saving, loading, the app, the benchmark runner) reads the entry and the traits, never the task's
name. A head whose user is a history implements ``history_users(items, histories)`` and
``history_length``; one whose user is a labelled history, ``users_of_histories``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from peftrec.config import RecipeConfig
from peftrec.data.preference import HISTORY
from peftrec.models.spec import ArtifactError
from peftrec.models.towers import TwoTowers
from peftrec.models.traits import Traits
from peftrec.shipped import RECIPES
from peftrec.tasks.preference.config import PreferenceRecipeConfig
from peftrec.tasks.preference.head import PreferenceHead
from peftrec.tasks.ranking.config import RankingRecipeConfig
from peftrec.tasks.ranking.head import RankingHead
from peftrec.tasks.rating.config import RatingRecipeConfig
from peftrec.tasks.rating.head import RatingHead
from peftrec.tasks.sequential.config import SequentialRecipeConfig
from peftrec.tasks.sequential.head import SequentialHead

BENCHMARK_SCHEMA = "peftrec-benchmark/1"
"""The ``schema`` of a benchmark record (``benchmarks/run.py`` writes it, the report reads it)."""


class Reported(NamedTuple):
    """A number a task's runs report: its key in ``metrics.json`` (``test_`` + key), the label
    benchmark tables print, and which way is better."""

    key: str
    label: str
    higher_is_better: bool


@dataclass(frozen=True)
class Task:
    name: str
    title: str
    """Its name in report headings."""
    summary: str
    head: type[TwoTowers]
    config: type[RecipeConfig]
    recipe: str
    """The recipe's file under ``recipes/`` (installed as ``peftrec_recipes``), whose
    ``main(argv)`` trains it."""
    protocols: tuple[str, ...]
    """Values of ``data.protocol`` the recipe evaluates."""
    metric: str
    """The :mod:`peftrec.metrics` module that scores it."""
    reported: tuple[Reported, ...]
    """What the benchmarks report, headline first."""
    head_options: Callable[[Any, dict], dict] | None = None
    """``(config, head arguments of the shared sections) -> the head's arguments``, for a task
    whose head takes more (or fewer) than the two-tower heads."""

    @property
    def traits(self) -> Traits:
        """What a user of this task is and what its scores are (a head's options may add to
        them: :meth:`traits_for`)."""
        return self.head.traits_for({})

    def traits_for(self, head: dict) -> Traits:
        """The traits of this task's head built from ``head`` (a spec's head arguments)."""
        return self.head.traits_for(head)

    @property
    def headline(self) -> Reported:
        return self.reported[0]

    def recipe_path(self) -> Path:
        return RECIPES / self.recipe


def rating_head_options(cfg, head: dict) -> dict:
    """A rating head reads users' rated items only when asked (older saved specs lack the keys)."""
    if cfg.model.user_history:
        head = {**head, "history": True}
    if cfg.model.fact_neighbours:
        head = {**head, "fact_neighbours": True}
    return head


def sequential_head_options(cfg, head: dict) -> dict:
    """A sequential head's encoder settings."""
    seq = cfg.sequence
    return {
        **head,
        "max_history": seq.max_history,
        "blocks": seq.blocks,
        "heads": seq.heads,
        "history_dropout": seq.dropout,
        "text_norm": seq.text_norm,
        "empty_state": seq.empty_state,
        **({"recency": True} if seq.recency else {}),  # older saved specs lack the key
        **({"members": seq.members} if seq.members > 1 else {}),
    }


def preference_head_options(cfg, head: dict) -> dict:
    """A preference head's reader and what it reads of a record."""
    return {
        **head,
        "reader": cfg.preference.reader,
        "history": HISTORY,
        "history_targets": cfg.preference.history_targets,
        "record_length": cfg.preference.record_length,
        "content": cfg.preference.content,
    }


TASKS: dict[str, Task] = {
    "rating": Task(
        name="rating",
        title="Rating prediction",
        summary="rating prediction: a biased dot product regressed on ratings (MSE)",
        head=RatingHead,
        config=RatingRecipeConfig,
        recipe="train_rating.py",
        head_options=rating_head_options,
        protocols=("p1", "p2", "p2u", "p3", "p4", "all"),
        metric="rating_error",
        reported=(
            Reported("rmse", "RMSE", False),
            Reported("mse", "MSE", False),
            Reported("mae", "MAE", False),
        ),
    ),
    "ranking": Task(
        name="ranking",
        title="Top-K ranking",
        summary=(
            "top-K ranking: a dot product trained with a softmax over the step's items (or BPR)"
        ),
        head=RankingHead,
        config=RankingRecipeConfig,
        recipe="train_ranking.py",
        protocols=("p3", "p4", "all"),
        metric="ranking",
        reported=(
            Reported("ndcg@{k}", "NDCG@{k}", True),
            Reported("hr@{k}", "HR@{k}", True),
            Reported("mrr", "MRR", True),
        ),
    ),
    "sequential": Task(
        name="sequential",
        title="Next-item recommendation",
        summary=(
            "next-item prediction: a causal encoder over the user's history, a softmax over the "
            "catalogue"
        ),
        head=SequentialHead,
        config=SequentialRecipeConfig,
        recipe="train_sequential.py",
        protocols=("p3", "p4"),
        metric="ranking",
        reported=(
            Reported("ndcg@{k}", "NDCG@{k}", True),
            Reported("hr@{k}", "HR@{k}", True),
            Reported("mrr", "MRR", True),
        ),
        head_options=sequential_head_options,
    ),
    "preference": Task(
        name="preference",
        title="Binary preference",
        summary=(
            "binary preference: the probability that a user with a labelled history likes an "
            "item (BCE)"
        ),
        head=PreferenceHead,
        config=PreferenceRecipeConfig,
        recipe="train_preference.py",
        protocols=("tallrec-movie", "tallrec-book", "p3"),
        metric="preference",
        reported=(
            Reported("auc", "AUC", True),
            Reported("logloss", "LogLoss", False),
            Reported("gauc", "GAUC", True),
        ),
        head_options=preference_head_options,
    ),
}


def traits_of(spec) -> Traits:
    """The traits of a saved model's head, from its spec (no network needed)."""
    return task_of(spec.task).traits_for(spec.head)


def task_of(name: str) -> Task:
    """The task named ``name``; an :class:`ArtifactError` (a saved model names it) otherwise."""
    if name not in TASKS:
        raise ArtifactError(f"unknown task {name!r}; peftrec knows {', '.join(TASKS)}")
    return TASKS[name]
