"""What serving needs, computed once at save time: every item's and user's vector and bias.

A peftrec head scores ``link(offset + b_u + b_i + <p_u, q_i>)`` (rating: the global mean and
both biases; ranking and history models: no offset and no user bias). A saved model keeps the
catalogue's ``q_i, b_i`` and the users' ``p_u, b_u`` (a history model: the state after each
user's history) in ``serving.safetensors``, so an app scores known users and items with numpy
alone: no torch, no language model, no pass over the catalogue. The pooled text encodings go
with them, so the language model, loaded the first time a new text must be encoded, encodes
only that text.

The file records a digest of the folder's other files: vectors that no longer match the weights
or the catalogue (a file replaced by hand) are ignored with a warning, never served.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

SERVING_FILE = "serving.safetensors"
INDEX_FILE = "index.safetensors"  # the app's approximate item index (peftrec.app.index)
SERVING_VERSION = "1"
# what the vectors do not depend on (the index is derived from them)
CUT_FILE = "served_cut.json"
"""In an updated model folder: the served state it was trained from, and the last write read."""
UNHASHED = {SERVING_FILE, INDEX_FILE, CUT_FILE, "README.md", "config.yaml"}
LINKS = ("identity", "sigmoid")

logger = logging.getLogger("peftrec.app.recommender")


@dataclass
class ServingVectors:
    """Item and user vectors and biases, with the offset and link that turn them into scores."""

    item_vectors: np.ndarray
    """(items, dim) float32: ``q_i``, the catalogue's rows in catalogue order."""
    item_biases: np.ndarray
    """(items,) float32: ``b_i``."""
    user_vectors: np.ndarray
    """(users, dim) float32: ``p_u``, or a history model's state after each user's history."""
    user_biases: np.ndarray
    """(users,) float32: ``b_u`` (zero without a user bias)."""
    offset: float = 0.0
    """Added to every score (a rating model's global mean)."""
    link: str = "identity"
    """``identity`` or ``sigmoid`` (a head whose scores are probabilities)."""
    ratings: bool = False
    """The scores are predicted ratings (clipped to the training scale when served)."""
    user: str | None = None
    """What a user is (:attr:`peftrec.models.traits.Traits.user`); None in folders saved before
    it was written, unless they are a history model's."""

    @property
    def histories(self) -> bool:
        """Users are their histories (a sequential model): their vector is the history's state."""
        return self.user == "history"

    def __post_init__(self) -> None:
        if self.link not in LINKS:
            raise ValueError(f"serving vectors: link {self.link!r} is not one of {LINKS}")

    def _linked(self, raw: np.ndarray) -> np.ndarray:
        raw = raw + np.float32(self.offset)
        return 1.0 / (1.0 + np.exp(-raw)) if self.link == "sigmoid" else raw

    def pairs(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Scores of aligned (user row, item row) pairs."""
        dots = np.einsum("nd,nd->n", self.user_vectors[users], self.item_vectors[items])
        return self._linked(dots + self.user_biases[users] + self.item_biases[items])

    def rows(self, users: np.ndarray) -> np.ndarray:
        """``(users, items)``: the given users against the whole catalogue."""
        return self.against(self.user_vectors[users], self.user_biases[users])

    def against(
        self,
        vectors: np.ndarray,
        biases: np.ndarray,
        item_vectors: np.ndarray | None = None,
        item_biases: np.ndarray | None = None,
    ) -> np.ndarray:
        """Users given by their vectors and biases against the catalogue (or the given items)."""
        items = self.item_vectors if item_vectors is None else item_vectors
        item_b = self.item_biases if item_biases is None else item_biases
        return self._linked(vectors @ items.T + biases[:, None] + item_b[None, :])


def folder_digest(folder: Path) -> str:
    """sha256 over the names and bytes of the folder's files that the vectors depend on."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = path.relative_to(folder).as_posix()
        if name in UNHASHED:
            continue
        digest.update(name.encode() + b"\0")
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def write_serving(folder: Path, vectors: ServingVectors, item_text: np.ndarray) -> None:
    """Write ``serving.safetensors`` into a folder whose other files are complete."""
    arrays = {
        "item_vectors": vectors.item_vectors,
        "item_biases": vectors.item_biases,
        "user_vectors": vectors.user_vectors,
        "user_biases": vectors.user_biases,
        "item_text": item_text,
    }
    arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in arrays.items()}
    metadata = {
        "version": SERVING_VERSION,
        "digest": folder_digest(folder),
        "offset": json.dumps(float(vectors.offset)),
        "link": vectors.link,
        "scores": "ratings" if vectors.ratings else "scores",
        "users": "histories" if vectors.histories else "table",
        **({"user": vectors.user} if vectors.user else {}),
    }
    save_file(arrays, folder / SERVING_FILE, metadata=metadata)


def read_serving(
    folder: Path, num_users: int, num_items: int, digest: str | None = None
) -> ServingVectors | None:
    """The folder's serving vectors, or None (with a warning saying why) when it has none that
    match its weights and catalogue; the caller then computes them with the model. ``digest``:
    the folder's :func:`folder_digest` when the caller has it (it reads every file)."""
    path = folder / SERVING_FILE
    if not path.is_file():
        return None
    try:
        with safe_open(path, framework="np") as f:
            meta = f.metadata() or {}
            if meta.get("version") != SERVING_VERSION:
                return _ignored(path, f"version {meta.get('version')!r}")
            if meta.get("digest") != (digest or folder_digest(folder)):
                return _ignored(path, "the weights or catalogue changed since it was written")
            names = ("item_vectors", "item_biases", "user_vectors", "user_biases")
            vectors = ServingVectors(
                *(f.get_tensor(n) for n in names),
                offset=float(json.loads(meta["offset"])),
                link=meta.get("link", "identity"),
                ratings=meta.get("scores") == "ratings",
                user=meta.get("user") or ("history" if meta.get("users") == "histories" else None),
            )
    except (SafetensorError, OSError, ValueError, KeyError) as err:
        return _ignored(path, f"unreadable ({err})")
    shapes = (len(vectors.item_vectors), len(vectors.item_biases))
    if shapes != (num_items, num_items) or len(vectors.user_vectors) != num_users:
        return _ignored(path, f"sized for other id lists than catalog.json's {num_items} items")
    return vectors


def read_item_text(folder: Path) -> np.ndarray | None:
    """The pooled text encodings saved with the vectors (None without a serving file)."""
    path = folder / SERVING_FILE
    if not path.is_file():
        return None
    with safe_open(path, framework="np") as f:
        return f.get_tensor("item_text")


def _ignored(path: Path, why: str) -> None:
    logger.warning("%s: not used (%s); the vectors are computed with the model instead", path, why)
    return None
