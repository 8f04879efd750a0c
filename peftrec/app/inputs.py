"""Checks on what apps pass to the :class:`~peftrec.app.recommender.Recommender`: clear errors for
wrong types, ids given twice, bad numbers; warnings for texts the model can only half read."""

from __future__ import annotations

import logging
import math
import numbers
import operator
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

logger = logging.getLogger("peftrec.app.recommender")
UNKNOWN_SHARE_WARNING = 0.5  # warn when more than this share of a text's tokens are unknown


def check_id(value: Any, where: str, kind: str = "item") -> str:
    """An id as the string the model stores: str or int (numpy ints too); None, bools, floats
    and other objects are refused."""
    if isinstance(value, str):
        if not value.strip():
            raise ValueError(f"{where}: an empty {kind} id")
        return value
    if isinstance(value, bool) or value is None or not hasattr(type(value), "__index__"):
        raise TypeError(
            f"{where}: {kind} ids are strings or integers, got {value!r} ({type(value).__name__})"
        )
    return str(operator.index(value))


def id_mapping(value: Any, where: str, kind: str, what: str, example: str) -> dict[str, Any]:
    """``{id: value}`` with ids as strings; refuses non-mappings and ids that collide as strings
    (``"9100"`` and ``9100``)."""
    if not isinstance(value, Mapping):
        raise TypeError(
            f"{where}: pass a mapping {{{kind}_id: {what}}}, e.g. {example}; "
            f"got {type(value).__name__}"
        )
    if not value:
        raise ValueError(f"{where}: no {kind}s given")
    out: dict[str, Any] = {}
    for key, item in value.items():
        name = check_id(key, where, kind)
        if name in out:
            raise ValueError(
                f"{where}: {kind} id {name!r} is given twice (as a string and as a number?)"
            )
        out[name] = item
    return out


def id_list(value: Any, where: str, kind: str) -> list[str]:
    """A list of ids from a list, tuple or array (a single string is refused: it is one id)."""
    if (
        isinstance(value, (str, bytes))
        or isinstance(value, Mapping)
        or not isinstance(value, Iterable)
    ):
        raise TypeError(
            f"{where}: pass a list of {kind} ids, e.g. ['196', '10']; got {type(value).__name__}"
        )
    return [check_id(v, where, kind) for v in value]


def check_moment(at: Any, where: str) -> float:
    """A moment of prediction or of an interaction: a finite number of seconds since the epoch."""
    if isinstance(at, bool) or not isinstance(at, (int, float, np.integer, np.floating)):
        raise TypeError(f"{where}: at is a time in seconds since the epoch, got {at!r}")
    if not np.isfinite(at):
        raise ValueError(f"{where}: at must be a finite time in seconds, got {at!r}")
    return float(at)


def check_k(k: Any, where: str) -> int:
    if isinstance(k, bool) or not hasattr(type(k), "__index__") or operator.index(k) < 1:
        raise ValueError(f"{where}: k must be a positive integer, got {k!r}")
    return operator.index(k)


def check_text(text: Any, where: str, name: str) -> str:
    if not isinstance(text, str):
        raise TypeError(f"{where}: the text of {name} must be a string, got {type(text).__name__}")
    if not text.strip():
        raise ValueError(f"{where}: {name} has an empty text")
    return text


def check_rating(rating: Any, where: str, name: str, scale: tuple[float, float] | None) -> float:
    """A finite number inside the model's rating scale (when it knows one)."""
    if isinstance(rating, bool) or not isinstance(rating, numbers.Real):
        raise TypeError(f"{where}: the rating of {name} must be a number, got {rating!r}")
    if not math.isfinite(rating):
        raise ValueError(f"{where}: the rating of {name} is {rating}, not a finite number")
    if scale is not None and not scale[0] <= rating <= scale[1]:
        raise ValueError(
            f"{where}: the rating of {name} is {rating:g}, outside the scale the model was "
            f"trained on ({scale[0]:g} to {scale[1]:g})"
        )
    return float(rating)


def warn_about_texts(
    tokenizer, texts: list[str], names: list[str], max_length: int, where: str
) -> None:
    """Warn (once per call, naming the first) about texts cut to ``max_length`` tokens and texts
    whose tokens are mostly unknown to the tokenizer (a script or emoji outside its vocabulary)."""
    encoded = tokenizer(texts, add_special_tokens=False, truncation=False)["input_ids"]
    special = 2 if getattr(tokenizer, "cls_token_id", None) is not None else 0
    long = [
        (n, len(ids))
        for n, ids in zip(names, encoded, strict=True)
        if len(ids) + special > max_length
    ]
    if long:
        message = (
            f"{where}: {len(long)} text(s) are longer than the {max_length} tokens the model reads "
            f"and were cut (e.g. {long[0][0]}: {long[0][1]} tokens); put what matters first"
        )
        warnings.warn(message, stacklevel=3)
        logger.warning(message)
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None:
        return
    unreadable = [
        n
        for n, ids in zip(names, encoded, strict=True)
        if ids and sum(t == unk for t in ids) / len(ids) > UNKNOWN_SHARE_WARNING
    ]
    if unreadable:
        message = (
            f"{where}: {len(unreadable)} text(s) are mostly tokens the model does not know (e.g. "
            f"{unreadable[0]}): their scores say little; use the language of the training texts"
        )
        warnings.warn(message, stacklevel=3)
        logger.warning(message)


ADD_HINTS = {
    "item": "add it first with add_items({id: text})",
    "user": (
        "add one with add_users({id: profile}), fold_in(id, {item_id: rating}) or "
        "add_interactions({id: [item_id]})"
    ),
}


def rows_of(ids: list[str], index: Mapping[str, int], where: str, kind: str) -> list[int]:
    """The rows of known ids (already checked with :func:`check_id`); a KeyError names the first
    unknown one and says how to add it."""
    missing = [i for i in ids if i not in index]
    if missing:
        known = f"this model knows {len(index)} users; " if kind == "user" else ""
        raise KeyError(
            f"{where}: unknown {kind} id {missing[0]!r} ({len(missing)} unknown of {len(ids)}); "
            f"{known}{ADD_HINTS[kind]}"
        )
    return [index[i] for i in ids]


def check_texts(texts: Any, where: str) -> list[str]:
    """A list of item texts (each checked as :func:`check_text`)."""
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise TypeError(f"{where}: pass a list of texts, e.g. {where}('196', ['a comedy'])")
    return [check_text(text, where, f"text {k}") for k, text in enumerate(texts)]


def check_aligned(item_ids: list[str], given: Any, what: str, where: str) -> None:
    """``given`` (users or histories) is a list aligned with ``item_ids``."""
    if isinstance(given, (str, bytes)) or len(given) != len(item_ids):
        count = 1 if isinstance(given, (str, bytes)) else len(given)
        raise ValueError(f"{where}: {len(item_ids)} items but {count} {what}; pass aligned lists")


def labelled_pairs(history: Any, where: str) -> tuple[list[str], list[int]]:
    """``(item ids, 0/1 labels)`` of one history of ``(item_id, liked)`` pairs."""
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
    return ids, labels


def top_k(scores: np.ndarray, k: int, where: str, whom: str) -> np.ndarray:
    """The rows of the ``k`` highest finite scores, best first (ties: lower row first)."""
    available = int(np.isfinite(scores).sum())
    if k > available:
        raise ValueError(f"{where}: k={k} but only {available} items are left{whom}")
    top = np.argpartition(-scores, k - 1)[:k]
    return top[np.argsort(-scores[top], kind="stable")]
