"""The app API: load a trained model, recommend and score, add items and users, save.

A saved model carries its item and user vectors (:mod:`peftrec.artifact.vectors`), so loading it and
serving known users and items needs numpy alone: no torch, transformers or PEFT import and no
language-model pass. The network (:class:`~peftrec.app.engine.ModelRecommender`) is
loaded lazily, once, the first time a text must be encoded or the catalogue or users change
(``add_items``, ``add_users``, ``fold_in``, ``add_interactions``, ``predict_texts``,
``recommend_for_history``); it reuses the saved text encodings, so it encodes only new texts.

Safe under concurrent use: every method holds one lock while it reads or changes the
catalogue, the users or the vectors, so threads may call ``recommend`` while others
``add_items``; ``add_items`` and ``add_users`` encode their texts, and the first write loads the
network, without that lock, so reads do not wait behind the language model.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from peftrec.app.durable import DurableWrites
from peftrec.app.inputs import (
    check_aligned,
    check_id,
    check_k,
    check_moment,
    id_list,
    labelled_pairs,
)
from peftrec.app.served import ServedModel

if TYPE_CHECKING:
    from peftrec.app.explain import Explanation

logger = logging.getLogger(__name__)


class Recommender(DurableWrites, ServedModel):
    """A trained peftrec model and its catalogue, served from their vectors.

    Items are scored from their text (and, for items the model was trained on, their ID
    embedding); :meth:`add_items` adds items by text alone. Users are trained rows, or added with
    :meth:`add_users` (a profile text), :meth:`fold_in` (a few ratings) or
    :meth:`add_interactions` (items they interacted with); a history model's users are their
    histories. Rating models predict ratings, clipped to the scale of the training ratings;
    ranking models predict scores, comparable only within one user. :meth:`save_pretrained`
    writes it all back as a model folder.
    """

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
        self._write("items", items=items, fields=fields, knowledge=knowledge)

    # -- users -------------------------------------------------------------------------------
    def add_users(self, users: Mapping[str, str]) -> None:
        """Add users who have no ratings yet, as ``{user_id: profile_text}``.

        Needs a model trained with ``model.user_text=true``: a new user's vector is the projection
        of the encoded profile (the user-ID part is zero) and the bias 0. The text should follow
        the training template (ml-100k: "A 24-year-old male technician."). Users added earlier
        may get a new profile (a user folded in with ratings is refit with it); the profiles of
        trained users cannot be replaced, since their vectors were learned with their own.
        """
        self._write("users", users=users)

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
        self._write("ratings", user=user_id, ratings=ratings, l2=l2)

    def add_interactions(
        self, interactions: Mapping[str, Sequence[str]], l2: float = 0.05, at: float | None = None
    ) -> None:
        """Record that users interacted with items, as ``{user_id: [item_id, ...]}`` (time order).

        Every model counts the items as seen (:meth:`recommend` leaves them out). A user the
        model does not know is added: a ranking model fits the user's vector to the items with its
        own loss (a softmax over the catalogue, ``l2`` towards the profile vector or zero); a
        rating model, which needs ratings to fit a user (:meth:`fold_in`), gives them the profile
        vector (or zero) and no bias, so they get the items' baseline scores. Known users keep
        their vectors (users added this way are refit with all their items). A history model
        (sequential) appends the items to the user's history, so the next call scores from it.
        ``at``: when they happened (seconds since the epoch; default: now), which a model that
        weighs what is popular now (``sequence.recency``) counts from then on.
        """
        if self._recent is not None:  # the write log keeps the moment, so a replay counts it
            at = time.time() if at is None else check_moment(at, "add_interactions")
            self._write("interactions", interactions=interactions, l2=l2, at=at)
        else:
            self._write("interactions", interactions=interactions, l2=l2)

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, *, state: str | Path | None = None, **kwargs: Any
    ) -> Recommender:
        """Load a model folder (``ServedModel.from_pretrained``, same arguments); with
        ``state``, the writes it holds are replayed and every write is kept there
        (:meth:`attach_state`)."""
        recommender = super().from_pretrained(folder, **kwargs)
        if state is not None:
            recommender.attach_state(state)
        return recommender

    def _apply(self, kind: str, payload: dict[str, Any], publishing=None) -> None:
        engine = self.engine
        if kind == "items":  # encodes without the lock; publishes inside ``publishing``
            fields, knowledge = payload.get("fields"), payload.get("knowledge")
            engine.add_items(payload["items"], fields, knowledge, publishing=publishing)
        elif kind == "users":  # encodes without the lock too
            engine.add_users(payload["users"], publishing=publishing)
        elif kind == "interactions":
            engine.add_interactions(payload["interactions"], payload["l2"])
            if self._recent is not None:  # the users exist now; their items count from ``at``
                at = payload.get("at", self._recent.latest())
                for user_id, items in payload["interactions"].items():
                    row = self.user_index[user_id]
                    self._recent.record(row, self.item_rows(items, "add_interactions"), at)
        elif kind == "ratings":
            engine.fold_in(payload["user"], payload["ratings"], payload["l2"])
            if self._neighbours is not None:  # the ratings as the fit read them
                row = self.user_index[check_id(payload["user"], "fold_in", "user")]
                self._neighbours.record(row, *engine.folded_ratings(row))
        else:
            raise ValueError(f"unknown write {kind!r}")

    def _items_written(self, rows: np.ndarray) -> None:
        """After items ``rows`` were added or changed: the index (if any) takes them, and a
        fact-neighbour term reads their facts."""
        self._index_items(rows)
        if self._neighbours is not None and len(rows):
            self._neighbours.put_facts(rows, self.engine.facts_of(rows).cpu().numpy())

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
        check_aligned(
            item_ids, given, "users" if users is not None else "histories", "predict_proba"
        )
        if not item_ids:
            return np.zeros(0, dtype=np.float32)
        with self._lock:
            rows = self.item_rows(item_ids, "predict_proba")
            if users is not None:
                user_rows = self.user_rows(users, "predict_proba")
                empty = [u for u in user_rows.tolist() if len(self.seen[u]) == 0]
                if empty:
                    raise ValueError(
                        f"predict_proba: user {self.user_ids[empty[0]]!r} has no labelled "
                        "interactions in this model (it was trained on other users' records); "
                        "pass their history: histories=[[(item_id, liked), ...]]"
                    )
                if not self.traits.pairs:  # the saved vectors' dot products
                    return self._served().pairs(user_rows, rows).astype(np.float32)
                labelled = self.engine.labelled_histories(user_rows.tolist())
            else:
                labelled = []
                for k, history in enumerate(histories):
                    ids, labels = labelled_pairs(history, f"predict_proba: histories[{k}]")
                    labelled.append((self.item_rows(ids, f"predict_proba: histories[{k}]"), labels))
            return self.engine.preference_probabilities(rows, labelled).astype(np.float32)

    def recommend_for_history(
        self, item_ids: Sequence[str], k: int = 10, exclude_seen: bool = True, at=None
    ) -> list[tuple[str, float]]:
        """The ``k`` best next items after an anonymous session's items (time order); a history
        model only. With ``exclude_seen`` the session's items are left out. ``at``: the moment
        of prediction (:meth:`score_all`); the session is taken to have just happened."""
        k = check_k(k, "recommend_for_history")
        with self._lock:
            rows, scores = self._history_scores(item_ids, "recommend_for_history", at)
            if exclude_seen:
                scores[rows] = -np.inf
            return self._top(scores, k, "recommend_for_history", "")

    def score_history(self, item_ids: Sequence[str], at=None, last=None) -> np.ndarray:
        """Scores of every catalogue item (as :meth:`score_all`) as the next item after a
        session's items (time order; empty: no history); a history model only. ``at``: the
        moment of prediction, ``last``: when the session's last item happened (default: at)."""
        with self._lock:
            return self._history_scores(item_ids, "score_history", at, last)[1].astype(np.float32)

    def _history_scores(
        self, item_ids: Sequence[str], where: str, at=None, last=None
    ) -> tuple[np.ndarray, np.ndarray]:
        if not self.traits.history:
            raise ValueError(
                f"{where} needs a history model (recipes/train_sequential.py); this "
                f"is a {self.spec.task} model, whose users are rows of a table"
            )
        rows = self.item_rows(item_ids, where)
        state = self.engine.history_state(rows.tolist())
        scores = self._served().against(state, np.zeros(1, dtype=np.float32))[0]
        if self._recent is not None:
            moment = self._recent.moments(np.zeros(1), at)
            ended = np.array([np.nan if not len(rows) else moment[0] if last is None else last])
            scores = scores + self._recent.scores(state, moment, ended, len(self.item_ids))[0]
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
    def save_pretrained(self, folder: str | Path, overwrite: bool = False) -> Path:
        """Write the model with everything added since loading (items, users, interactions) as a
        model folder, atomically; :meth:`from_pretrained` of it gives the same scores.

        Never deletes what it did not write: a target that is a file, or a folder that is not
        empty and not a peftrec model, is refused; an existing model folder is replaced only
        with ``overwrite=True``."""
        target = Path(folder)
        if target.is_file() or target.is_symlink():
            raise ValueError(f"save_pretrained: {target} is a file; name a folder")
        if target.is_dir() and any(target.iterdir()):
            if not (target / "peftrec.json").is_file():
                raise ValueError(
                    f"save_pretrained: {target} holds other files (not a peftrec model); "
                    "name a new or empty folder"
                )
            if not overwrite:
                raise ValueError(
                    f"save_pretrained: {target} is a saved model already; pass overwrite=True "
                    "to replace it"
                )
        with self._lock:
            times = None if self._recent is None else self._recent.aligned_times
            index = None if self._index is None else self._index.save
            return self.engine.save_pretrained(target, seen_times_of=times, extra=index)
