"""The approximate top-k of a served model (:class:`IndexedTopK`, a part of
:class:`~peftrec.app.served.ServedModel`): ``use_index``, the index kept in step with item writes,
and one user's top ``k`` through it (the index itself: :mod:`peftrec.app.index`)."""

from __future__ import annotations

import logging

import numpy as np

from peftrec.app.index import IndexSettings, ItemIndex
from peftrec.artifact.vectors import ServingVectors

logger = logging.getLogger("peftrec.app.recommender")
SEARCH_CHUNK = 1024  # users searched at once


class IndexedTopK:
    """What :class:`~peftrec.app.served.ServedModel` serves through an :class:`ItemIndex` (it
    holds ``_index`` and ``_index_settings``, set in its ``_start``)."""

    def _indexed_tops(
        self, rows: list[int], k: int, exclude_seen: bool, where: str, whoms: list[str]
    ) -> list[list[tuple[str, float]]]:
        """Users' top ``k`` from the approximate index, searched for :data:`SEARCH_CHUNK` users
        at once: the candidates it finds, less the seen items, scored exactly; exact over the
        catalogue for a user it finds too few for."""
        vectors = self._served()
        out = []
        for start in range(0, len(rows), SEARCH_CHUNK):
            chunk = rows[start : start + SEARCH_CHUNK]
            seen = [
                self.seen[row] if exclude_seen else np.zeros(0, dtype=np.int64) for row in chunk
            ]
            count = k + max(len(s) for s in seen)
            found_all = self._index.search(vectors.user_vectors[chunk], count)
            for row, mine, found, whom in zip(
                chunk, seen, found_all, whoms[start : start + SEARCH_CHUNK], strict=True
            ):
                found = found[(found >= 0) & ~np.isin(found, mine)]
                if len(found) < k:  # too few in the scanned lists: score them all
                    scores = self._user_scores(np.asarray([row]), None)[0]
                    scores[mine] = -np.inf
                    out.append(self._top(scores, k, where, whom))
                    continue
                user = vectors.user_vectors[[row]], vectors.user_biases[[row]]
                scores = vectors.against(
                    *user, vectors.item_vectors[found], vectors.item_biases[found]
                )[0]
                order = np.argsort(-scores, kind="stable")[:k]
                shown = self._bounded(scores[order])
                out.append(
                    [(self.item_ids[i], float(s)) for i, s in zip(found[order], shown, strict=True)]
                )
        return out

    def use_index(self, above: int = 100_000, recall: float = 0.95, lists: int | None = None):
        """Serve the top-k of :meth:`recommend` and :meth:`recommend_batch` through an approximate
        nearest-neighbour index (:mod:`peftrec.app.index`, FAISS) once the catalogue has ``above``
        items or more; below that, exact. The index is built now if the catalogue is big enough
        (k-means over the item vectors), or when items added later make it so; ``recall`` is the
        recall@10 against exact scoring its probes are calibrated to, on sample users. Added or
        changed items enter it as they are written; :meth:`save_pretrained` saves it.

        Needs scores that are a dot product of saved vectors (not a model that weighs what is
        popular now). ``candidates`` lists are still ranked exactly."""
        settings = IndexSettings(above=above, recall=recall, lists=lists)
        with self._lock:
            if self._recent is not None:
                raise ValueError(
                    "use_index: this model weighs what is popular now (sequence.recency), so its "
                    "scores change with the moment and are not a dot product of stored vectors"
                )
            if self._neighbours is not None:
                raise ValueError(
                    "use_index: this model adds what each user gave items sharing facts "
                    "(model.fact_neighbours), a term that is not a dot product of stored vectors"
                )
            if not isinstance(self._served(), ServingVectors):
                raise ValueError(
                    "use_index: this model's scores are not a dot product of item and user "
                    "vectors, so no index can rank them; it is served exactly"
                )
            self._index_settings, self._index = settings, None
            self._index_items(np.zeros(0, dtype=np.int64))

    @property
    def index(self) -> ItemIndex | None:
        """The approximate index serving the top-k (None: exact)."""
        return self._index

    def _index_items(self, rows: np.ndarray) -> None:
        """After items ``rows`` were added or changed: keep the index in step (build it once the
        catalogue reaches the size asked for)."""
        settings = self._index_settings
        if settings is None or len(self.item_ids) < settings.above:
            return
        vectors = self._served()
        if self._index is None:
            logger.info("building the item index over %d items", len(self.item_ids))
            self._index = ItemIndex.build(
                vectors.item_vectors, vectors.item_biases, vectors.user_vectors, settings
            )
            return
        rows = np.union1d(rows, np.arange(self._index.size, len(self.item_ids)))
        self._index.put(rows, vectors.item_vectors[rows], vectors.item_biases[rows])
