"""The app API: load a trained model, recommend and score, add items and users, save.

A saved model carries its item and user vectors (:mod:`peftrec.artifact.vectors`), so loading it and
serving known users and items needs numpy alone: no torch, transformers or PEFT import and no
language-model pass. The network (:class:`~peftrec.app.engine.ModelRecommender`) is
loaded lazily, once, the first time a text must be encoded or the catalogue or users change
(``add_items``, ``add_users``, ``fold_in``, ``add_interactions``, ``predict_texts``,
``recommend_for_history``); it reuses the saved text encodings, so it encodes only new texts.

Safe under concurrent use: every method holds one lock while it reads or changes the
catalogue, the users or the vectors, so threads may call ``recommend`` while others
``add_items``; whichever thread first needs the network loads it, once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from peftrec.app.inputs import check_id, check_k, check_text, id_list, rows_of
from peftrec.artifact.folder import check_catalog, check_folder, histories, read_catalog
from peftrec.artifact.vectors import ServingVectors, read_item_text, read_serving
from peftrec.models.traits import Traits

if TYPE_CHECKING:
    from peftrec.app.engine import ModelRecommender
    from peftrec.app.explain import Explanation
    from peftrec.artifact.folder import Catalog

logger = logging.getLogger(__name__)


class Recommender:
    """A trained peftrec model and its catalogue, served from their vectors.

    Items are scored from their text (and, for items the model was trained on, their ID
    embedding); :meth:`add_items` adds items by text alone. Users are trained rows, or added with
    :meth:`add_users` (a profile text), :meth:`fold_in` (a few ratings) or
    :meth:`add_interactions` (items they interacted with); a history model's users are their
    histories. Rating models predict ratings, clipped to the scale of the training ratings;
    ranking models predict scores, comparable only within one user. :meth:`save_pretrained`
    writes it all back as a model folder.
    """

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

    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        *,
        device: str = "cpu",
        backbone: str | None = None,
        trust_remote_code: bool = False,
    ) -> Recommender:
        """Load a folder written by a peftrec recipe or :meth:`save_pretrained` (safetensors and
        JSON only; every file the model needs is checked first).

        Known users and items are served from the saved vectors; the network is loaded the
        first time a text must be encoded. ``backbone`` names where the base weights come from
        (default: the spec's backbone; given, it is loaded and checked at once); ``device``
        where the network runs.
        """
        folder = Path(folder)
        spec, meta = check_folder(folder)
        catalog = read_catalog(folder)
        check_catalog(catalog, spec, folder / "catalog.json")
        vectors = read_serving(folder, len(catalog.user_ids), len(catalog.item_ids))

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
            return engine

        recommender = cls.__new__(cls)
        recommender._start(spec, {**meta, "spec": spec}, catalog, vectors, loader=load)
        if vectors is None or backbone is not None:
            # nothing saved to serve from, or base weights to check: the network is needed now
            recommender.engine  # noqa: B018 (loads it)
        return recommender

    def _start(self, spec, meta: dict, catalog: Catalog, vectors, loader) -> None:
        self.spec = spec
        self.meta = meta
        self._lock = threading.RLock()
        self._loader = loader
        self._engine: ModelRecommender | None = None
        self._vectors: ServingVectors | None = vectors
        # whether the head's scores are the vectors' linked dot products (saved vectors: yes)
        self._dot_product: bool | None = True if vectors is not None else None
        self.user_ids = list(catalog.user_ids)
        self.item_ids = list(catalog.item_ids)
        self.item_texts = list(catalog.item_texts)
        self.item_fields = {k: list(v) for k, v in (catalog.item_fields or {}).items()}
        self.rating_scale = tuple(catalog.rating_scale) if catalog.rating_scale else None
        self.num_trained_items = spec.head["num_items"]
        self._user_index = {u: i for i, u in enumerate(self.user_ids)}
        self._item_index = {it: i for i, it in enumerate(self.item_ids)}
        self._seen = {u: np.unique(h) for u, h in histories(catalog).items()}
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
        """The network side (loaded on first use): it encodes texts and changes the catalogue."""
        with self._lock:
            if self._engine is None:
                engine = self._loader()
                # from now on the network's catalogue and users are the ones served
                self.user_ids, self.item_ids = engine.user_ids, engine.item_ids
                self.item_texts, self.item_fields = engine.item_texts, engine.item_fields
                self._user_index, self._item_index = engine._user_index, engine._item_index
                self._seen = engine._seen
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
        """After the network changed items or users (or first needed): serve its new vectors, or
        let the head score when its scores are not a linked dot product of them."""
        from peftrec.app.engine import HeadScores

        vectors = self.engine.serving_vectors()
        if self._dot_product is None:  # a property of the head, checked once
            self._dot_product = self.engine.serves_exactly(vectors)
        self._vectors = vectors if self._dot_product else HeadScores(self.engine)

    def _items(self, item_ids: Any, where: str) -> np.ndarray:
        ids = id_list(item_ids, where, "item")
        return np.asarray(rows_of(ids, self._item_index, where, "item"), dtype=np.int64)

    def _users(self, user_ids: Any, where: str) -> np.ndarray:
        ids = id_list(user_ids, where, "user")
        return np.asarray(rows_of(ids, self._user_index, where, "user"), dtype=np.int64)

    def _bounded(self, scores: np.ndarray) -> np.ndarray:
        """Ratings clipped to the training scale (rating models); other scores as they are."""
        if self.traits.ratings and self.rating_scale is not None:
            return np.clip(scores, *self.rating_scale)
        return scores

    # -- catalogue ---------------------------------------------------------------------------
    def add_items(
        self,
        items: Mapping[str, str],
        fields: Mapping[str, Mapping[str, str]] | None = None,
        knowledge: Mapping[str, Sequence[tuple[str, str]]] | None = None,
    ) -> None:
        """Add new items, or change the text of known ones, as ``{item_id: text}``.

        For a model with a knowledge tower, ``knowledge`` gives new items' facts as
        ``{item_id: [(relation, entity), ...]}`` (the relations of the training facts, e.g.
        ``("film.film.directed_by", "m.0bxtg")``); entities the model never learned are ignored.

        Only these texts are encoded. A new item has no ID embedding, so it is scored from its
        text alone (a model trained with ``model.item_id_dropout`` has learned to score trained
        items that way too). ``fields`` (``{item_id: {"title": ...}}``) are shown by
        :meth:`item_info`. Texts longer than the model reads, or mostly unknown to its
        tokenizer, get a warning.
        """
        with self._lock:
            self.engine.add_items(items, fields, knowledge)
            self._changed()

    def item_info(self, item_id: str) -> dict[str, str]:
        """What the catalogue knows of an item: its fields (title, year, ...) and its text."""
        with self._lock:
            row = int(self._items([item_id], "item_info")[0])
            return {
                **{k: v[row] for k, v in self.item_fields.items()},
                "text": self.item_texts[row],
            }

    # -- users -------------------------------------------------------------------------------
    def add_users(self, users: Mapping[str, str]) -> None:
        """Add users who have no ratings yet, as ``{user_id: profile_text}``.

        Needs a model trained with ``model.user_text=true``: a new user's vector is the projection
        of the encoded profile (the user-ID part is zero) and the bias 0. The text should follow
        the training template (ml-100k: "A 24-year-old male technician."). Users added earlier
        may get a new profile (a user folded in with ratings is refit with it); the profiles of
        trained users cannot be replaced, since their vectors were learned with their own.
        """
        with self._lock:
            self.engine.add_users(users)
            self._changed()

    def fold_in(self, user_id: str, ratings: Mapping[str, float], l2: float = 10.0) -> None:
        """Fit a user's bias and vector to a few ``{item_id: rating}``, with the items fixed.

        Closed-form ridge regression of ``rating - mean - b_i`` on ``b_u + <p_u, q_i>``, with
        penalty ``l2 * |(b_u, p_u) - prior|^2``. For a new user the prior is the profile vector
        (from :meth:`add_users`) and bias 0, or zero; for a trained user it is what the model
        learned, so the fit *updates* them with the new ratings, as far as they justify. Calling
        it again for the same user replaces the ratings given before (pass all you know). The
        ratings must lie on the training scale; the rated items count as seen. Rating models only
        (ranking models: :meth:`add_interactions`). The default ``l2`` was the best on the
        validation users of ml-100k p2u (``benchmarks/cold_users.py``).
        """
        with self._lock:
            self.engine.fold_in(user_id, ratings, l2)
            self._changed()

    def add_interactions(self, interactions: Mapping[str, Sequence[str]], l2: float = 0.05) -> None:
        """Record that users interacted with items, as ``{user_id: [item_id, ...]}`` (time order).

        Every model counts the items as seen (:meth:`recommend` leaves them out). A user the
        model does not know is added: a ranking model fits the user's vector to the items with its
        own loss (a softmax over the catalogue, ``l2`` towards the profile vector or zero); a
        rating model, which needs ratings to fit a user (:meth:`fold_in`), gives them the profile
        vector (or zero) and no bias, so they get the items' baseline scores. Known users keep
        their vectors (users added this way are refit with all their items). A history model
        (sequential) appends the items to the user's history, so the next call scores from it.
        """
        with self._lock:
            self.engine.add_interactions(interactions, l2)
            self._changed()

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
            rows = self._users(users, "predict"), self._items(items, "predict")
            return self._bounded(self._served().pairs(*rows)).astype(np.float32)

    def predict_proba(
        self,
        items: Sequence[str],
        users: Sequence[str] | None = None,
        histories: Sequence[Sequence[tuple[str, bool]]] | None = None,
    ) -> np.ndarray:
        """A preference model: the probability that each user likes the aligned item.

        Give one of ``users`` (known user ids: each is their last labelled interactions the model
        was trained on) or ``histories`` (per item, a labelled history: ``(item_id, liked)``
        pairs in time order, as a benchmark record carries; the last ten are read).
        """
        if not self.traits.labelled:
            raise ValueError(
                "predict_proba needs a preference model (recipes/train_preference.py); this is a "
                f"{self.spec.task} model: use predict"
            )
        item_ids = id_list(items, "predict_proba", "item")
        if (users is None) == (histories is None):
            raise ValueError(
                "predict_proba: pass users (known user ids) or histories (lists of "
                "(item_id, liked) pairs), one of them, aligned with items"
            )
        given = users if users is not None else histories
        if isinstance(given, (str, bytes)) or len(given) != len(item_ids):
            raise ValueError(
                f"predict_proba: {len(item_ids)} items but "
                f"{1 if isinstance(given, (str, bytes)) else len(given)} "
                f"{'users' if users is not None else 'histories'}; pass aligned lists"
            )
        if not item_ids:
            return np.zeros(0, dtype=np.float32)
        with self._lock:
            rows = self._items(item_ids, "predict_proba")
            if users is not None:
                user_rows = self._users(users, "predict_proba")
                empty = [u for u in user_rows.tolist() if len(self._seen[u]) == 0]
                if empty:
                    raise ValueError(
                        f"predict_proba: user {self.user_ids[empty[0]]!r} has no labelled "
                        "interactions in this model (it was trained on other users' records); "
                        "pass their history: histories=[[(item_id, liked), ...]]"
                    )
                if self.spec.head.get("reader") != "cross":  # the saved vectors' dot products
                    return self._served().pairs(user_rows, rows).astype(np.float32)
                engine = self.engine
                labelled = [(engine._history[u], engine._labels[u]) for u in user_rows.tolist()]
            else:
                labelled = [self._labelled_history(h, k) for k, h in enumerate(histories)]
            return self.engine.preference_probabilities(rows, labelled).astype(np.float32)

    def _labelled_history(self, history: Any, k: int) -> tuple[np.ndarray, list[int]]:
        """``(item rows, 0/1 labels)`` of one history of ``(item_id, liked)`` pairs."""
        where = f"predict_proba: histories[{k}]"
        if isinstance(history, (str, bytes)) or not isinstance(history, Sequence):
            raise TypeError(f"{where}: pass a list of (item_id, liked) pairs, e.g. [('50', True)]")
        if len(history) == 0:
            raise ValueError(f"{where}: empty; a record needs at least one (item_id, liked) pair")
        ids, labels = [], []
        for j, pair in enumerate(history):
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
                raise TypeError(f"{where}[{j}]: {pair!r} is not an (item_id, liked) pair")
            liked = pair[1]
            if not (isinstance(liked, (bool, np.bool_)) or liked in (0, 1)):
                raise ValueError(f"{where}[{j}]: liked must be True/False or 1/0, got {liked!r}")
            ids.append(check_id(pair[0], where, "item"))
            labels.append(int(liked))
        return self._items(ids, where), labels

    def predict_texts(self, user_id: str, texts: Sequence[str]) -> np.ndarray:
        """Scores (as :meth:`predict`) of one user for items given only by their texts
        (not stored)."""
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise TypeError(
                "predict_texts: pass a list of texts, e.g. predict_texts('196', ['a comedy'])"
            )
        if len(texts) == 0:
            return np.zeros(0, dtype=np.float32)
        for k, text in enumerate(texts):
            check_text(text, "predict_texts", f"text {k}")
        with self._lock:
            row = self._users([user_id], "predict_texts")
            vectors = self._served()
            items = self.engine.text_items(list(texts))
            scores = vectors.against(vectors.user_vectors[row], vectors.user_biases[row], *items)
            return self._bounded(scores[0]).astype(np.float32)

    def score_all(self, user_ids: Sequence[str] | None = None) -> np.ndarray:
        """Scores (as :meth:`predict`) of the given (default: all) users for every catalogue item,
        ``(users, items)``."""
        with self._lock:
            rows = (
                np.arange(len(self.user_ids))
                if user_ids is None
                else self._users(user_ids, "score_all")
            )
            return self._bounded(self._served().rows(rows)).astype(np.float32)

    def recommend(
        self,
        user_id: str,
        k: int = 10,
        exclude_seen: bool = True,
        candidates: Sequence[str] | None = None,
    ) -> list[tuple[str, float]]:
        """The ``k`` highest-scored items for ``user_id`` as ``(item_id, score)``, best first.

        With ``exclude_seen`` the items the user is known to have interacted with (the training
        interactions saved with the model, and those added since) are left out. ``candidates``
        (item ids) restricts the ranking to those items, e.g. a shelf of new arrivals.
        """
        if not isinstance(user_id, (str, int, np.integer)) or isinstance(user_id, bool):
            raise TypeError(
                f"recommend: pass one user id (str or int), got {type(user_id).__name__}; "
                "for several users use recommend_batch(user_ids, k)"
            )
        return self.recommend_batch([user_id], k, exclude_seen, candidates, where="recommend")[0]

    def recommend_batch(
        self,
        user_ids: Sequence[str],
        k: int = 10,
        exclude_seen: bool = True,
        candidates: Sequence[str] | None = None,
        where: str = "recommend_batch",
    ) -> list[list[tuple[str, float]]]:
        """:meth:`recommend` for many users at once (one matrix product), in the given order."""
        k = check_k(k, where)
        users = id_list(user_ids, where, "user")
        with self._lock:
            allowed = None if candidates is None else self._items(candidates, where)
            rows = self._users(users, where)
            scores = self._served().rows(rows).astype(np.float64)
            if allowed is not None:  # only these items compete (new arrivals, a genre ...)
                outside = np.ones(scores.shape[1], dtype=bool)
                outside[allowed] = False
                scores[:, outside] = -np.inf
            if exclude_seen:
                for r, row in enumerate(rows.tolist()):
                    scores[r, self._seen[row]] = -np.inf
            return [
                self._top(scores[r], k, where, f" to user {user!r}") for r, user in enumerate(users)
            ]

    def _top(self, scores: np.ndarray, k: int, where: str, whom: str) -> list[tuple[str, float]]:
        available = int(np.isfinite(scores).sum())
        if k > available:
            raise ValueError(f"{where}: k={k} but only {available} items are left{whom}")
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        shown = self._bounded(scores[top])
        return [(self.item_ids[i], float(s)) for i, s in zip(top, shown, strict=True)]

    def recommend_for_history(
        self, item_ids: Sequence[str], k: int = 10, exclude_seen: bool = True
    ) -> list[tuple[str, float]]:
        """The ``k`` best next items after an anonymous session's items (time order); a history
        model only. With ``exclude_seen`` the session's items are left out."""
        k = check_k(k, "recommend_for_history")
        with self._lock:
            rows, scores = self._history_scores(item_ids, "recommend_for_history")
            if exclude_seen:
                scores[rows] = -np.inf
            return self._top(scores, k, "recommend_for_history", "")

    def score_history(self, item_ids: Sequence[str]) -> np.ndarray:
        """Scores of every catalogue item (as :meth:`score_all`) as the next item after a
        session's items (time order; empty: no history); a history model only."""
        with self._lock:
            return self._history_scores(item_ids, "score_history")[1].astype(np.float32)

    def _history_scores(self, item_ids: Sequence[str], where: str) -> tuple[np.ndarray, np.ndarray]:
        if not self.traits.history:
            raise ValueError(
                f"{where} needs a history model (recipes/train_sequential.py); this "
                f"is a {self.spec.task} model, whose users are rows of a table"
            )
        rows = self._items(item_ids, where)
        state = self.engine.history_state(rows.tolist())
        scores = self._served().against(state, np.zeros(1, dtype=np.float32))[0]
        return rows, scores.astype(np.float64)

    # -- explanations ------------------------------------------------------------------------
    def explain(self, user_id: str, item_id: str, steps: int = 32) -> Explanation:
        """Why ``item_id`` scores what it does for ``user_id``: the attribution of each word of the
        item's text (integrated gradients through the adapted language model, ``steps`` points;
        they sum to the score minus the score without the words) and, for a history model, the
        score drop without each past item. See :mod:`peftrec.app.explain`; needs ``captum``."""
        from peftrec.app.explain import explain_pair

        user_id, item_id = check_id(user_id, "explain", "user"), check_id(item_id, "explain")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
            raise ValueError(f"explain: steps must be an integer >= 2, got {steps!r}")
        with self._lock:
            return explain_pair(self.engine, user_id, item_id, steps)

    # -- saving ------------------------------------------------------------------------------
    def save_pretrained(self, folder: str | Path) -> Path:
        """Write the model with everything added since loading (items, users, interactions) as a
        model folder, atomically; :meth:`from_pretrained` of it gives the same scores."""
        with self._lock:
            return self.engine.save_pretrained(folder)
