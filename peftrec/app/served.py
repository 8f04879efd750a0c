"""The read side of the app: a saved model served from its vectors.

:class:`ServedModel` loads a folder, predicts, scores and recommends for known users and items
from the saved vectors (numpy only: no torch, transformers or PEFT import), and loads the network
(:class:`~peftrec.app.engine.ModelRecommender`) the first time a text must be encoded.
:class:`~peftrec.app.recommender.Recommender` adds the writes (items, users, interactions), the
history and preference scores, explanations and saving.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import numpy as np

from peftrec.app.index import IndexSettings, ItemIndex
from peftrec.app.indexed import IndexedTopK
from peftrec.app.inputs import (
    check_k,
    check_texts,
    id_list,
    rows_of,
    top_k,
)
from peftrec.app.neighbours import ServedNeighbours
from peftrec.app.recency import ServedRecency, recency_log
from peftrec.artifact.folder import check_catalog, check_folder, histories, read_catalog
from peftrec.artifact.vectors import (
    INDEX_FILE,
    ServingVectors,
    folder_digest,
    read_item_text,
    read_serving,
)
from peftrec.models.traits import Traits

if TYPE_CHECKING:
    from peftrec.app.engine import ModelRecommender
    from peftrec.artifact.folder import Catalog

logger = logging.getLogger("peftrec.app.recommender")

CHUNK_SCORES = 1 << 22
"""How many scores :meth:`ServedModel.recommend_batch` holds at once (16 MiB of float32)."""


class ServedModel(IndexedTopK):
    """A trained peftrec model and its catalogue, served from their vectors (reads only; apps use
    :class:`~peftrec.app.recommender.Recommender`, which also takes writes)."""

    def __init__(
        self,
        model,
        tokenizer,
        catalog: Catalog,
        meta: dict | None = None,
        device: str = "cpu",
        batch_size: int = 256,
    ):
        """Serve a model in memory (apps load a folder with :meth:`from_pretrained`)."""
        from peftrec.app.engine import ModelRecommender

        engine = ModelRecommender(model, tokenizer, catalog, meta, device, batch_size)
        self._start(engine.spec, engine.meta, catalog, None, loader=lambda: engine)
        gate = getattr(model.head, "recency_gate", None)
        if gate is not None:
            self._recent = ServedRecency(
                gate.weight.detach().cpu().numpy(),
                gate.bias.detach().cpu().numpy(),
                *recency_log(catalog, "the model in memory"),
            )
        if getattr(model.head, "neighbours", None) is not None:
            self._neighbours = ServedNeighbours.from_head(model.head, catalog)

    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        *,
        device: str = "cpu",
        backbone: str | None = None,
        trust_remote_code: bool = False,
        exact: bool = False,
    ) -> Self:
        """Load a folder written by a peftrec recipe or :meth:`save_pretrained` (safetensors and
        JSON only; every file the model needs is checked first).

        Known users and items are served from the saved vectors; the network is loaded the
        first time a text must be encoded. ``backbone`` names where the base weights come from
        (default: the spec's backbone; given, it is loaded and checked at once); ``device``
        where the network runs. A folder saved with an approximate index (:meth:`use_index`)
        serves its top-k through it, unless ``exact``.
        """
        folder = Path(folder)
        spec, meta = check_folder(folder)
        catalog = read_catalog(folder)
        check_catalog(catalog, spec, folder / "catalog.json")
        digest = folder_digest(folder)  # once: the vectors and a served state check it
        vectors = read_serving(folder, len(catalog.user_ids), len(catalog.item_ids), digest)

        def load() -> ModelRecommender:
            from peftrec.app.engine import ModelRecommender
            from peftrec.artifact.save import load_artifact

            model, tokenizer, saved, info = load_artifact(
                folder, backbone=backbone, trust_remote_code=trust_remote_code
            )
            engine = ModelRecommender(model, tokenizer, saved, info, device=device)
            encodings = read_item_text(folder) if vectors is not None else None
            if encodings is not None:  # the catalogue is not encoded again
                engine.set_item_text_encodings(encodings)
                engine.set_serving_vectors(vectors)  # nor its vectors computed again
            return engine

        recommender = cls.__new__(cls)
        recommender._start(spec, {**meta, "spec": spec}, catalog, vectors, loader=load)
        recommender._digest, recommender._folder = digest, folder
        if spec.head.get("recency"):  # what is popular now: the gate from the saved head
            recommender._recent = ServedRecency.from_folder(folder, *recency_log(catalog, folder))
        if spec.head.get("fact_neighbours"):  # the pair term: weights and ratings in the head
            recommender._neighbours = ServedNeighbours.from_folder(folder, catalog)
        if not exact and vectors is not None and (folder / INDEX_FILE).is_file():
            recommender._index = ItemIndex.load(
                folder / INDEX_FILE, vectors.item_vectors, vectors.item_biases
            )
            recommender._index_settings = recommender._index.settings
        if vectors is None or backbone is not None:
            # nothing saved to serve from, or base weights to check: the network is needed now
            recommender.engine  # noqa: B018 (loads it)
        return recommender

    def _start(self, spec, meta: dict, catalog: Catalog, vectors, loader) -> None:
        self.spec = spec
        self.meta = meta
        self._lock = threading.RLock()
        self._load_lock = threading.Lock()  # one thread loads the network
        self._digest: str | None = None  # loaded from a folder: the model the writes apply to
        self._folder: Path | None = None  # that folder
        self._state = None  # the durable state writes are kept in (Recommender.attach_state)
        self._shared = False  # other processes write to that state too
        self._applied = 0  # the sequence number of the last logged write applied here
        self._retired: str | None = None  # swapped out for this model: writes are refused
        self._loader = loader
        self._engine: ModelRecommender | None = None
        self._vectors: ServingVectors | None = vectors
        self._recent: ServedRecency | None = None  # a history model weighing what is popular now
        self._neighbours: ServedNeighbours | None = None  # a rating model's fact-neighbour term
        self._index: ItemIndex | None = None  # the approximate top-k, when asked and big enough
        self._index_settings: IndexSettings | None = None
        # whether the head's scores are the vectors' linked dot products (saved vectors: yes)
        self._dot_product: bool | None = True if vectors is not None else None
        self.user_ids = list(catalog.user_ids)
        self.item_ids = list(catalog.item_ids)
        self.item_texts = list(catalog.item_texts)
        self.item_fields = {k: list(v) for k, v in (catalog.item_fields or {}).items()}
        self.rating_scale = tuple(catalog.rating_scale) if catalog.rating_scale else None
        self.num_trained_items = spec.head["num_items"]
        self.user_index = {u: i for i, u in enumerate(self.user_ids)}
        self.item_index = {it: i for i, it in enumerate(self.item_ids)}
        self.seen = {u: np.unique(h) for u, h in histories(catalog).items()}
        if vectors is not None and vectors.user is not None:  # no network, no torch
            self.traits = Traits(user=vectors.user, ratings=vectors.ratings)
        else:
            from peftrec.tasks import traits_of  # the heads (torch)

            self.traits = traits_of(spec)
        """What a user of this model is and what its scores are (:mod:`peftrec.models.traits`)."""
        self.num_trained_users = spec.head.get("num_users", 0) if self.traits.user_table else 0

    # -- the network, loaded when needed -----------------------------------------------------
    @property
    def engine(self) -> ModelRecommender:
        """The network side (loaded on first use): it encodes texts and changes the catalogue.

        Loaded without the lock reads take (reads from the vectors go on meanwhile); until it is
        loaded nothing has changed, so the catalogue it brings equals the one served."""
        if self._engine is None:
            with self._load_lock:
                if self._engine is None:
                    engine = self._loader()
                    engine._lock = self._lock  # one lock: a write publishes as reads see it
                    # from now on the network's catalogue and users are the ones served
                    self.user_ids, self.item_ids = engine.user_ids, engine.item_ids
                    self.item_texts, self.item_fields = engine.item_texts, engine.item_fields
                    self.user_index, self.item_index = engine.user_index, engine.item_index
                    self.seen = engine.seen
                    self._engine = engine
                    logger.info("loaded the network of %s", self.spec.backbone)
        return self._engine

    @property
    def model(self):
        """The trained network (:class:`~peftrec.models.network.RecModel`); loads it when needed."""
        return self.engine.model

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    @property
    def network_loaded(self) -> bool:
        """Whether the network has been loaded (serving known ids does not need it)."""
        return self._engine is not None

    def _served(self) -> ServingVectors:
        with self._lock:
            if self._vectors is None:  # a model in memory: encode the catalogue once
                self._changed()
            return self._vectors

    def _changed(self) -> None:
        """After the network changed items or users (or first needed): serve its vectors (views
        of its tables, which a write changes row by row: no copy), or let the head score when
        its scores are not a linked dot product of them."""
        from peftrec.app.engine import HeadScores

        vectors = self.engine.serving_vectors()
        if self._dot_product is None:  # a property of the head, checked once
            self._dot_product = self.engine.serves_exactly(vectors)
        self._vectors = vectors if self._dot_product else HeadScores(self.engine)

    def item_rows(self, item_ids: Any, where: str) -> np.ndarray:
        ids = id_list(item_ids, where, "item")
        return np.asarray(rows_of(ids, self.item_index, where, "item"), dtype=np.int64)

    def user_rows(self, user_ids: Any, where: str) -> np.ndarray:
        ids = id_list(user_ids, where, "user")
        return np.asarray(rows_of(ids, self.user_index, where, "user"), dtype=np.int64)

    def _bounded(self, scores: np.ndarray) -> np.ndarray:
        """Ratings clipped to the training scale (rating models); other scores as they are."""
        if self.traits.ratings and self.rating_scale is not None:
            return np.clip(scores, *self.rating_scale)
        return scores

    def item_info(self, item_id: str) -> dict[str, str]:
        """What the catalogue knows of an item: its fields (title, year, ...) and its text."""
        with self._lock:
            row = int(self.item_rows([item_id], "item_info")[0])
            return {
                **{k: v[row] for k, v in self.item_fields.items()},
                "text": self.item_texts[row],
            }

    # -- scoring -----------------------------------------------------------------------------
    def predict(self, user_ids: Sequence[str], item_ids: Sequence[str]) -> np.ndarray:
        """Scores of aligned pairs ``(user_ids[k], item_ids[k])``: predicted ratings, clipped to the
        training scale, for a rating model; for a ranking model, scores that order one user's items
        (higher is better) and mean nothing across users or as ratings."""
        users, items = id_list(user_ids, "predict", "user"), id_list(item_ids, "predict", "item")
        if len(users) != len(items):
            raise ValueError(
                f"predict: {len(users)} users but {len(items)} items; pass aligned lists"
            )
        if not users:
            return np.zeros(0, dtype=np.float32)
        with self._lock:
            rows = self.user_rows(users, "predict"), self.item_rows(items, "predict")
            if self._recent is not None:  # the pairs' users' rows at the default moment
                return self._user_scores(rows[0], None)[np.arange(len(rows[0])), rows[1]]
            vectors = self._served()
            scores = vectors.pairs(*rows)
            if self._neighbours is not None:
                scores = scores + self._neighbours.pairs(*rows, vectors)
            return self._bounded(scores).astype(np.float32)

    def predict_texts(self, user_id: str, texts: Sequence[str]) -> np.ndarray:
        """Scores (as :meth:`predict`) of one user for items given only by their texts
        (not stored)."""
        texts = check_texts(texts, "predict_texts")
        if len(texts) == 0:
            return np.zeros(0, dtype=np.float32)
        with self._lock:
            row = self.user_rows([user_id], "predict_texts")
            vectors = self._served()
            items = self.engine.text_items(texts)
            scores = vectors.against(vectors.user_vectors[row], vectors.user_biases[row], *items)
            return self._bounded(scores[0]).astype(np.float32)

    def score_all(self, user_ids: Sequence[str] | None = None, at=None) -> np.ndarray:
        """Scores (as :meth:`predict`) of the given (default: all) users for every catalogue item,
        ``(users, items)``. ``at``: the moment of prediction (seconds; one, or one per user) for
        a model that weighs what is popular now (``sequence.recency``); default: the latest
        interaction it knows."""
        with self._lock:
            rows = (
                np.arange(len(self.user_ids))
                if user_ids is None
                else self.user_rows(user_ids, "score_all")
            )
            return self._bounded(self._user_scores(rows, at)).astype(np.float32)

    def _user_scores(self, rows: np.ndarray, at) -> np.ndarray:
        """Known users' (rows) scores for every item, with the recency term at ``at``."""
        vectors = self._served()
        scores = vectors.rows(rows)
        if self._neighbours is not None:
            scores = scores + self._neighbours.scores(rows, vectors)
        if self._recent is not None:
            scores = scores + self._recent.scores(
                vectors.user_vectors[rows],
                self._recent.moments(rows, at),
                self._recent.last_times(rows),
                len(self.item_ids),
            )
        elif at is not None:
            raise ValueError(
                "at: this model does not weigh what is popular now (sequence.recency), so its "
                "scores do not depend on the moment"
            )
        return scores

    def recommend(
        self,
        user_id: str,
        k: int = 10,
        exclude_seen: bool = True,
        candidates: Sequence[str] | None = None,
        at=None,
    ) -> list[tuple[str, float]]:
        """The ``k`` highest-scored items for ``user_id`` as ``(item_id, score)``, best first.

        With ``exclude_seen`` the items the user is known to have interacted with (the training
        interactions saved with the model, and those added since) are left out. ``candidates``
        (item ids) restricts the ranking to those items, e.g. a shelf of new arrivals. ``at``:
        the moment of prediction, as in :meth:`score_all`.
        """
        if not isinstance(user_id, (str, int, np.integer)) or isinstance(user_id, bool):
            raise TypeError(
                f"recommend: pass one user id (str or int), got {type(user_id).__name__}; "
                "for several users use recommend_batch(user_ids, k)"
            )
        return self.recommend_batch(
            [user_id], k, exclude_seen, candidates, where="recommend", at=at
        )[0]

    def recommend_batch(
        self,
        user_ids: Sequence[str],
        k: int = 10,
        exclude_seen: bool = True,
        candidates: Sequence[str] | None = None,
        where: str = "recommend_batch",
        at=None,
    ) -> list[list[tuple[str, float]]]:
        """:meth:`recommend` for many users at once, in the given order: matrix products over
        chunks of users (:data:`CHUNK_SCORES` scores at a time), so memory stays bounded
        whatever the number of users."""
        k = check_k(k, where)
        users = id_list(user_ids, where, "user")
        with self._lock:
            outside = None
            if candidates is not None:  # only these items compete (new arrivals, a genre ...)
                outside = np.ones(len(self.item_ids), dtype=bool)
                outside[self.item_rows(candidates, where)] = False
            rows = self.user_rows(users, where).tolist()
            if self._index is not None and outside is None and at is None:
                whoms = [f" to user {user!r}" for user in users]
                return self._indexed_tops(rows, k, exclude_seen, where, whoms)
            moments = None if at is None else np.broadcast_to(np.asarray(at), (len(rows),))
            step = max(1, CHUNK_SCORES // max(1, len(self.item_ids)))
            top = []
            for start in range(0, len(rows), step):
                chunk = rows[start : start + step]
                when = None if moments is None else moments[start : start + step]
                scores = self._user_scores(np.asarray(chunk, dtype=np.int64), when)
                if outside is not None:
                    scores[:, outside] = -np.inf
                for r, row in enumerate(chunk):
                    if exclude_seen:
                        scores[r, self.seen[row]] = -np.inf
                    whom = f" to user {users[start + r]!r}"
                    top.append(self._top(scores[r], k, where, whom))
            return top

    def _top(self, scores: np.ndarray, k: int, where: str, whom: str) -> list[tuple[str, float]]:
        top = top_k(scores, k, where, whom)
        shown = self._bounded(scores[top])
        return [(self.item_ids[i], float(s)) for i, s in zip(top, shown, strict=True)]
