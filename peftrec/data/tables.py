"""In-memory containers: the interactions table and a dataset with id maps and text fields."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from peftrec.data.errors import DataError
from peftrec.data.text import DEFAULT_ITEM_TEMPLATE, DEFAULT_USER_TEMPLATE, render_texts


@dataclass
class Interactions:
    """One row per rating, in file order."""

    users: np.ndarray
    """int64 index into `RecDataset.user_ids`."""
    items: np.ndarray
    """int64 index into `RecDataset.item_ids`."""
    ratings: np.ndarray
    """float32 rating values."""
    timestamps: np.ndarray | None
    """float64 timestamps, or None when the file has none."""

    def __post_init__(self) -> None:
        self.users = np.asarray(self.users, dtype=np.int64)
        self.items = np.asarray(self.items, dtype=np.int64)
        self.ratings = np.asarray(self.ratings, dtype=np.float32)
        if self.timestamps is not None:
            self.timestamps = np.asarray(self.timestamps, dtype=np.float64)
        lengths = {len(self.users), len(self.items), len(self.ratings)}
        if self.timestamps is not None:
            lengths.add(len(self.timestamps))
        if len(lengths) != 1:
            raise DataError(f"interaction columns have different lengths: {sorted(lengths)}")

    def __len__(self) -> int:
        return len(self.ratings)

    def subset(self, rows: np.ndarray) -> Interactions:
        """The given rows (an index or boolean mask), in the given order."""
        rows = np.asarray(rows)
        timestamps = None if self.timestamps is None else self.timestamps[rows]
        return Interactions(self.users[rows], self.items[rows], self.ratings[rows], timestamps)


@dataclass
class RecDataset:
    """Users, items, their text fields and the interactions between them."""

    name: str
    user_ids: list[str]
    """Original user ids as strings; a user's index is its position."""
    item_ids: list[str]
    """Original item ids as strings; an item's index is its position."""
    item_fields: dict[str, list[str]]
    """Per-item text fields aligned with `item_ids` (e.g. title, year, genres)."""
    user_fields: dict[str, list[str]]
    """Per-user fields aligned with `user_ids`; {} when there are none."""
    interactions: Interactions
    """Row k is the k-th data row of the interactions file."""

    def __post_init__(self) -> None:
        for kind, fields, ids in [
            ("item", self.item_fields, self.item_ids),
            ("user", self.user_fields, self.user_ids),
        ]:
            for field, values in fields.items():
                if len(values) != len(ids):
                    raise DataError(
                        f"{kind} field {field!r} has {len(values)} values for {len(ids)} {kind}s"
                    )
        for kind, codes, ids in [
            ("user", self.interactions.users, self.user_ids),
            ("item", self.interactions.items, self.item_ids),
        ]:
            if len(codes) and (codes.min() < 0 or codes.max() >= len(ids)):
                raise DataError(f"interactions hold {kind} indices outside 0..{len(ids) - 1}")

    def item_texts(self, template: str = DEFAULT_ITEM_TEMPLATE) -> list[str]:
        """One text per item, aligned with `item_ids`."""
        if not self.item_fields:
            raise DataError(
                f"dataset {self.name!r} has no item text fields: an items file with text "
                "columns is needed (load_files(..., items=...))"
            )
        return render_texts(template, self.item_fields, self.item_ids, "item")

    def user_texts(self, template: str = DEFAULT_USER_TEMPLATE) -> list[str] | None:
        """One text per user, aligned with `user_ids`; None when there are no user fields."""
        if not self.user_fields:
            return None
        return render_texts(template, self.user_fields, self.user_ids, "user")

    def item_index(self) -> dict[str, int]:
        """Original item id -> index."""
        return {item: k for k, item in enumerate(self.item_ids)}

    def user_index(self) -> dict[str, int]:
        """Original user id -> index."""
        return {user: k for k, user in enumerate(self.user_ids)}
