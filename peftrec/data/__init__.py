"""Data layer: datasets as id maps + text fields + interactions, loaders, splits, templates."""

from peftrec.data.errors import DataError
from peftrec.data.loading import ColumnMap, load_files
from peftrec.data.movielens import fetch_movielens, load_movielens
from peftrec.data.sources import load_data
from peftrec.data.splits import Protocol, Split, check_splits, fingerprint, split_rows
from peftrec.data.tables import Interactions, RecDataset
from peftrec.data.text import DEFAULT_ITEM_TEMPLATE, DEFAULT_USER_TEMPLATE, render_texts

__all__ = [
    "DEFAULT_ITEM_TEMPLATE",
    "DEFAULT_USER_TEMPLATE",
    "ColumnMap",
    "DataError",
    "Interactions",
    "Protocol",
    "RecDataset",
    "Split",
    "check_splits",
    "fetch_movielens",
    "fingerprint",
    "load_data",
    "load_files",
    "load_movielens",
    "render_texts",
    "split_rows",
]
