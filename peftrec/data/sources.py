"""Pick the data source named by a recipe's ``data`` config section."""

from __future__ import annotations

from peftrec.data.errors import DataError
from peftrec.data.loading import load_files
from peftrec.data.movielens import load_movielens
from peftrec.data.tables import RecDataset


def load_data(cfg) -> RecDataset:
    """A MovieLens set by name, or the user's own files when ``cfg.dataset == "files"``."""
    if cfg.dataset == "files":
        if not cfg.interactions:
            raise DataError('data.dataset is "files" but data.interactions names no file')
        return load_files(cfg.interactions, cfg.items, cfg.users)
    if cfg.interactions or cfg.items or cfg.users:
        raise DataError(
            f'data.interactions/items/users are only read with data.dataset="files", '
            f"not with {cfg.dataset!r}"
        )
    return load_movielens(cfg.dataset)
