"""Item knowledge as (item, relation, entity) facts: MovieLens-100K's Freebase graph, or your own.

MovieLens-100K's knowledge graph ships with RecBole (``ml-100k.kg``: 91,631 Freebase triples
between entities). RecBole's ``ml-100k.link``, which maps items to entities, is keyed by
MovieLens-1M movie ids, not ml-100k item ids (item 50, Star Wars, points at The Usual
Suspects), so any feature built on it is noise: peftrec never reads it. It ships a repaired
link instead (``ml100k_freebase.link``, package data): each ml-100k item matched to its ML-1M id
by normalised title and release year, then to that id's entity (1,532 of 1,682 items).

An item's facts are the triples its entity heads (``relation``, tail) or tails (``relation^-1``,
head). *Pre-release* relations leave out award nominations and wins, which describe how a film
was received and would not exist for a brand-new release.

Your own file (``data.item_knowledge``): CSV/TSV/Parquet/JSON Lines with columns ``item_id``,
``relation``, ``entity``; every item id must be in the items file.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from peftrec.data.cache import cache_root, checksum
from peftrec.data.errors import DataError
from peftrec.data.loading import _Table
from peftrec.data.movielens import KG_FILE, KG_SHA256, SHIPPED_LINK_SHA256, fetch_movielens

LINK_RESOURCE = "ml100k_freebase.link"
RECEPTION = ("film.film.award_nomination", "film.film.award_won")
INVERSE = "^-1"


@dataclass
class ItemKnowledge:
    """Facts about items: row k says item ``items[k]`` has ``entities[k]`` under
    ``relations[k]``."""

    items: np.ndarray
    """int64 item index (into the dataset's ``item_ids``)."""
    relations: list[str]
    entities: list[str]

    def __len__(self) -> int:
        return len(self.items)

    def subset(self, keep: np.ndarray) -> ItemKnowledge:
        keep = np.asarray(keep, dtype=bool)
        return ItemKnowledge(
            self.items[keep],
            [r for r, k in zip(self.relations, keep, strict=True) if k],
            [e for e, k in zip(self.entities, keep, strict=True) if k],
        )

    def pre_release(self) -> ItemKnowledge:
        """Without the relations that describe reception (award nominations and wins)."""
        return self.subset(
            np.array([r.removesuffix(INVERSE) not in RECEPTION for r in self.relations])
        )

    def linked_items(self, num_items: int) -> np.ndarray:
        """Boolean per item: has at least one fact."""
        return np.bincount(self.items, minlength=num_items) > 0


def repaired_link() -> dict[str, str]:
    """ml-100k item id -> Freebase entity, from the link shipped inside peftrec."""
    text = resources.files("peftrec.data").joinpath(LINK_RESOURCE).read_text(encoding="utf-8")
    rows = [line.split("\t") for line in text.splitlines()[1:] if line.strip()]
    return {item: entity for item, entity in rows}


def ml100k_kg_file(cache_dir: str | Path | None = None) -> Path:
    """The cached ``ml-100k.kg`` (RecBole's graph), fetched with the rest of ml-100k."""
    path = cache_root(cache_dir) / "ml-100k-kg" / KG_FILE
    if not path.is_file() or not path.with_name("ml-100k.link").is_file():
        fetch_movielens("ml-100k-kg", cache_dir=cache_dir)
    if checksum(path, "sha256") != KG_SHA256:
        raise DataError(f"{path}: checksum mismatch; delete it and run `peftrec fetch ml-100k-kg`")
    return path


def ml100k_knowledge(item_ids: list[str], cache_dir: str | Path | None = None) -> ItemKnowledge:
    """The facts of ml-100k's items from RecBole's graph through the repaired link."""
    link = repaired_link()
    entity_items: dict[str, list[int]] = {}
    index = {item: k for k, item in enumerate(item_ids)}
    for item, entity in link.items():
        if item in index:
            entity_items.setdefault(entity, []).append(index[item])
    items, relations, entities = [], [], []
    with open(ml100k_kg_file(cache_dir), encoding="utf-8") as f:
        rows = csv.reader(f, delimiter="\t")
        next(rows)
        for head, relation, tail in rows:
            for item in entity_items.get(head, ()):
                items.append(item)
                relations.append(relation)
                entities.append(tail)
            for item in entity_items.get(tail, ()):
                items.append(item)
                relations.append(relation + INVERSE)
                entities.append(head)
    return ItemKnowledge(np.asarray(items, dtype=np.int64), relations, entities)


def load_item_knowledge(path: str | Path, item_ids: list[str]) -> ItemKnowledge:
    """Your own facts file (columns ``item_id``, ``relation``, ``entity``), validated.

    Refuses RecBole's shipped ``ml-100k.link`` (keyed by the wrong ids), names the file, line and
    column of a missing value or an item id that is not in the catalogue.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data.item_knowledge: {path}: no such file")
    if checksum(path, "sha256") == SHIPPED_LINK_SHA256:
        raise DataError(
            f"{path} is RecBole's ml-100k.link, keyed by MovieLens-1M movie ids rather than "
            "ml-100k item ids (item 50, Star Wars, points at The Usual Suspects); peftrec ships a "
            "repaired link: leave data.item_knowledge unset for ml-100k"
        )
    table = _Table.read(path)
    table.require(["item_id", "relation", "entity"])
    items = table.encode(
        "item_id", table.ids("item_id", "item"), item_ids, "item", "the items file"
    )
    return ItemKnowledge(items, table.ids("relation", "relation"), table.ids("entity", "entity"))
