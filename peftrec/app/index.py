"""An approximate top-k index over the served item vectors, for big catalogues.

Exact top-k (every item scored, then a partial sort) is the default and costs one pass over the
catalogue per user. Above a size the app sets (:meth:`peftrec.Recommender.use_index`), an
inverted-list index from FAISS (``IndexIVFFlat``, inner product) finds each user's candidates
instead: k-means splits the items into lists, and a query scans only the lists nearest to it.

A score is ``link(<p_u, q_i> + b_u + b_i + offset)``, and the link is increasing, so a user's
order is that of ``<p_u, q_i> + b_i``: the index holds ``[q_i, b_i]`` and queries with
``[p_u, 1]``, which folds the item bias into the inner product. How many lists a query scans
(``probes``) is calibrated when the index is built: the fewest for which the top 10 of sample
users reach the recall against exact scoring the app asked for.

Saved as ``index.safetensors`` beside the serving vectors (the centroids and the settings, no
pickle); loading assigns the items to the saved lists again (one pass, no k-means), and
:meth:`ItemIndex.put` adds new or changed items to their nearest list.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from peftrec.artifact.vectors import INDEX_FILE

CALIBRATION_USERS = 1000
CALIBRATION_K = 10
TRAINING_POINTS_PER_LIST = 64  # k-means sees at most this many items per list
CHUNK_SCORES = 1 << 25  # exact scores held at once while calibrating (128 MiB of float32)


@dataclass(frozen=True)
class IndexSettings:
    """When and how the approximate index serves the top-k."""

    above: int = 100_000
    """Catalogue size (items) from which the index serves the top-k; below it, exact."""
    recall: float = 0.95
    """Recall@10 against exact scoring that the probes are calibrated to reach."""
    lists: int | None = None
    """Inverted lists (k-means centroids); default ``sqrt(items)``, at least 1."""

    def __post_init__(self) -> None:
        if isinstance(self.above, bool) or not isinstance(self.above, int) or self.above < 1:
            raise ValueError(f"index: above must be a positive integer (items), got {self.above!r}")
        if not 0.0 < self.recall <= 1.0:
            raise ValueError(f"index: recall must be in (0, 1], got {self.recall!r}")
        if self.lists is not None and (
            isinstance(self.lists, bool) or not isinstance(self.lists, int) or self.lists < 1
        ):
            raise ValueError(f"index: lists must be a positive integer, got {self.lists!r}")


def faiss_module():
    """FAISS, or a clear error saying how to get it."""
    try:
        import faiss
    except ImportError:
        raise ValueError(
            "an approximate index needs FAISS: pip install 'peftrec[index]' (faiss-cpu)"
        ) from None
    return faiss


def augmented(vectors: np.ndarray, biases: np.ndarray) -> np.ndarray:
    """``[q_i, b_i]`` rows: an inner product with ``[p_u, 1]`` is ``<p_u, q_i> + b_i``."""
    return np.ascontiguousarray(np.hstack([vectors, biases[:, None]]), dtype=np.float32)


def queries(vectors: np.ndarray) -> np.ndarray:
    """``[p_u, 1]`` rows for the users' vectors."""
    ones = np.ones((len(vectors), 1), dtype=np.float32)
    return np.ascontiguousarray(np.hstack([vectors, ones]), dtype=np.float32)


class ItemIndex:
    """Inverted lists over ``[q_i, b_i]``; ids are the items' catalogue rows."""

    def __init__(self, centroids: np.ndarray, probes: int, settings: IndexSettings):
        faiss = faiss_module()
        centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        self.settings = settings
        self._quantizer = faiss.IndexFlatIP(centroids.shape[1])  # kept: the index points at it
        self._quantizer.add(centroids)
        self._index = faiss.IndexIVFFlat(
            self._quantizer, centroids.shape[1], len(centroids), faiss.METRIC_INNER_PRODUCT
        )
        self.probes = probes
        self.size = 0
        """Items indexed: rows ``0 .. size - 1`` of the catalogue."""

    @property
    def lists(self) -> int:
        return self._index.nlist

    @property
    def probes(self) -> int:
        return self._index.nprobe

    @probes.setter
    def probes(self, value: int) -> None:
        self._index.nprobe = max(1, min(int(value), self.lists))

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        biases: np.ndarray,
        users: np.ndarray,
        settings: IndexSettings,
        seed: int = 0,
    ) -> ItemIndex:
        """k-means over the items, every item added, and the probes calibrated on ``users``
        (user vectors; a sample of them is used)."""
        faiss = faiss_module()
        items = augmented(vectors, biases)
        count = settings.lists or max(1, round(math.sqrt(len(items))))
        count = min(count, len(items))
        rng = np.random.default_rng(seed)
        sample = items
        if len(items) > TRAINING_POINTS_PER_LIST * count:
            sample = items[rng.choice(len(items), TRAINING_POINTS_PER_LIST * count, replace=False)]
        kmeans = faiss.Kmeans(items.shape[1], count, niter=20, seed=seed, spherical=False)
        kmeans.train(sample)
        index = cls(kmeans.centroids, 1, settings)
        index._add(np.arange(len(items)), items)
        if len(users):
            picked = users[
                rng.choice(len(users), min(len(users), CALIBRATION_USERS), replace=False)
            ]
            index.calibrate(picked, items)
        return index

    def calibrate(self, users: np.ndarray, items: np.ndarray) -> float:
        """Set the probes to the fewest whose recall@10 on ``users`` against exact scoring of
        ``items`` reaches the settings' recall (doubling, then halving the gap); returns that
        recall."""
        asked = queries(users)
        k = min(CALIBRATION_K, len(items))
        step = max(1, CHUNK_SCORES // len(items))  # users scored exactly at once
        exact = np.concatenate(  # copies: a view would keep each chunk's whole argpartition
            [
                np.argpartition(-(asked[s : s + step] @ items.T), k - 1, axis=1)[:, :k].copy()
                for s in range(0, len(asked), step)
            ]
        )

        recalls: dict[int, float] = {}  # each probe count searched once

        def recall_at(probes: int) -> float:
            if probes not in recalls:
                self.probes = probes
                _, found = self._index.search(asked, k)
                hits = sum(len(np.intersect1d(f, e)) for f, e in zip(found, exact, strict=True))
                recalls[probes] = hits / exact.size
            return recalls[probes]

        low, high = 0, 1  # low: known too few (0: none tried); high: the candidate
        while recall_at(high) < self.settings.recall and high < self.lists:
            low, high = high, min(2 * high, self.lists)
        while high - low > 1:
            middle = (low + high) // 2
            if recall_at(middle) >= self.settings.recall:
                high = middle
            else:
                low = middle
        self.probes = high
        return recall_at(high)

    def put(self, rows: np.ndarray, vectors: np.ndarray, biases: np.ndarray) -> None:
        """Index items ``rows`` (new ones, or known ones whose vectors changed) with these
        vectors and biases; rows past the indexed ones must follow on from them."""
        self._add(np.asarray(rows, dtype=np.int64), augmented(vectors, biases))

    def _add(self, rows: np.ndarray, items: np.ndarray) -> None:
        """:meth:`put` of ``[q_i, b_i]`` rows."""
        if len(rows) == 0:
            return
        grown = int(rows.max()) + 1
        if grown > self.size and not np.isin(np.arange(self.size, grown), rows).all():
            raise ValueError(
                f"index: rows {self.size}..{grown - 1} must all be added (got {len(rows)} rows)"
            )
        known = rows[rows < self.size]  # checked first: a refused put changes nothing
        if len(known):
            self._index.remove_ids(known)
        self._index.add_with_ids(items, rows)
        self.size = max(self.size, grown)

    def search(self, users: np.ndarray, count: int) -> np.ndarray:
        """The ``count`` best item rows for each user vector, ``(users, count)`` (-1 where the
        scanned lists held fewer items)."""
        _, found = self._index.search(queries(users), max(1, min(count, self.size)))
        return found

    def save(self, folder: Path) -> None:
        """Write ``index.safetensors`` into ``folder``: centroids and settings."""
        centroids = self._quantizer.reconstruct_n(0, self.lists)
        save_file(
            {"centroids": np.ascontiguousarray(centroids, dtype=np.float32)},
            folder / INDEX_FILE,
            metadata={
                "probes": str(self.probes),
                "above": str(self.settings.above),
                "recall": repr(self.settings.recall),
                "lists": str(self.lists),
            },
        )

    @classmethod
    def load(cls, path: Path, vectors: np.ndarray, biases: np.ndarray) -> ItemIndex:
        """The index saved at ``path`` (:meth:`save`), filled with these item vectors."""
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(path, framework="numpy") as f:
                meta = f.metadata() or {}
            centroids = load_file(path)["centroids"]
            settings = IndexSettings(above=int(meta["above"]), recall=float(meta["recall"]))
            probes = int(meta["probes"])
        except (KeyError, ValueError, OSError, SafetensorError) as err:
            raise ValueError(f"{path}: not a peftrec item index ({err})") from None
        if centroids.ndim != 2 or centroids.shape[1] != vectors.shape[1] + 1:
            raise ValueError(
                f"{path}: centroids of shape {tuple(centroids.shape)} do not fit item vectors "
                f"of {vectors.shape[1]} dimensions (expected (lists, {vectors.shape[1] + 1}))"
            )
        index = cls(centroids, probes, settings)
        index.put(np.arange(len(vectors)), vectors, biases)
        return index
