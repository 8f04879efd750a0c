"""The vectors a trained network serves (:class:`~peftrec.artifact.vectors.ServingVectors`),
computed from its head: items from their pooled text encodings (with their ID rows and facts),
users from the user table or, for a history model, from the state after each user's history.

The training side computes a trained model's with :func:`trained_vectors` and hands them to
:func:`peftrec.artifact.save.save_artifact`; the app's engine
(:class:`~peftrec.app.engine.ModelRecommender`) computes those of its changed catalogue
and users with the same functions. Neither side needs the other.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch

from peftrec.artifact.folder import Catalog, histories
from peftrec.artifact.vectors import SERVING_FILE, ServingVectors
from peftrec.models.tokens import tokenize_texts

logger = logging.getLogger(__name__)

EXACT_USERS = 64
"""How many users :func:`serves_exactly` checks against the whole catalogue."""


def numpy32(tensor: torch.Tensor | np.ndarray) -> np.ndarray:
    """As a float32 numpy array (a CPU float32 tensor or array: the same memory, no copy)."""
    if isinstance(tensor, np.ndarray):
        return tensor.astype(np.float32, copy=False)
    return tensor.detach().float().cpu().numpy()


@torch.no_grad()
def item_vectors(
    head: torch.nn.Module,
    text: torch.Tensor,
    rows: torch.Tensor,
    num_trained_items: int,
    facts: torch.Tensor | None,
    device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(vectors, biases)`` of the item ``rows``: ``text`` holds every item's pooled encoding,
    rows past ``num_trained_items`` (added by text) have no ID embedding, ``facts`` are the
    rows' entity rows (a knowledge model) or None."""
    id_index = torch.where(rows < num_trained_items, rows, torch.full_like(rows, -1))
    return head.items(text[rows].to(device), id_index.to(device), facts)


@torch.no_grad()
def user_table(
    head: torch.nn.Module,
    items: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    user_histories: Sequence[np.ndarray],
    labels: Sequence[np.ndarray] | None,
    num_trained_users: int,
    device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(vectors, biases)`` of the users as the head makes them: from their labelled histories
    (``labels``, aligned with ``user_histories``), the state after each history (a history
    model), or the trained table's first ``num_trained_users`` rows. ``items`` gives the
    catalogue's item vectors, asked only by a head that reads histories."""
    if labels is not None:
        return head.users_of_histories(items(), list(zip(user_histories, labels, strict=True)))
    if head.traits.history:
        states = head.history_users(items(), list(user_histories))
        return states, states.new_zeros(len(states))
    index = torch.arange(num_trained_users, device=device)
    return tuple(t.clone() for t in head.users(index))


@torch.no_grad()
def serving_vectors(
    head: torch.nn.Module,
    items: tuple[torch.Tensor | np.ndarray, torch.Tensor | np.ndarray],
    users: tuple[torch.Tensor | np.ndarray, torch.Tensor | np.ndarray],
) -> ServingVectors:
    """Items' and users' vectors and biases as numpy, with the head's offset and link."""
    traits = head.traits
    return ServingVectors(
        *(numpy32(t) for t in (*items, *users)),
        offset=float(head.global_mean) if traits.ratings else 0.0,
        link=head.score_link,
        ratings=traits.ratings,
        user=traits.user,
    )


@torch.no_grad()
def serves_exactly(
    head: torch.nn.Module,
    vectors: ServingVectors,
    items: tuple[torch.Tensor, torch.Tensor],
    users: tuple[torch.Tensor, torch.Tensor],
) -> bool:
    """Whether ``vectors`` reproduce the head's own scores of ``items`` and ``users`` (float32
    rounding aside), on the first :data:`EXACT_USERS` users against the whole catalogue."""
    if head.traits.pairs:
        return False
    rows = torch.arange(min(len(vectors.user_vectors), EXACT_USERS))
    device = users[0].device
    expected = head.score_all(tuple(t[rows.to(device)] for t in users), items)
    got = vectors.rows(rows.numpy())
    return bool(np.allclose(got, numpy32(expected), rtol=1e-5, atol=1e-5))


def exact_vectors(
    head: torch.nn.Module,
    items: tuple[torch.Tensor, torch.Tensor],
    users: tuple[torch.Tensor, torch.Tensor],
    task: str,
) -> ServingVectors | None:
    """What a saved model serves: the vectors, or None when they do not reproduce the head's
    scores (the app then scores through the network)."""
    vectors = serving_vectors(head, items, users)
    if serves_exactly(head, vectors, items, users):
        return vectors
    logger.info(
        "the %s head's scores are not a dot product of vectors, so the model is served through "
        "the network (no %s)",
        task,
        SERVING_FILE,
    )
    return None


@torch.no_grad()
def trained_vectors(
    model,
    tokenizer,
    catalog: Catalog,
    item_text: torch.Tensor | None = None,
    batch_size: int = 256,
) -> tuple[ServingVectors | None, np.ndarray]:
    """What a just-trained model serves for its catalogue, as the app's engine would compute it
    from the saved folder: ``(vectors or None, the items' pooled text encodings)``, to pass to
    :func:`~peftrec.artifact.save.save_artifact`.

    ``item_text``: the catalogue's encodings by these weights when known (so the catalogue is
    not encoded again). Leaves the model in eval mode, as it is served.
    """
    if catalog.user_state is not None or catalog.item_facts is not None:
        raise ValueError(
            "trained_vectors: the catalogue holds users or items added after training; "
            "the app's engine computes their vectors (Recommender.save_pretrained)"
        )
    spec, head = model.spec, model.head
    device = next(model.parameters()).device
    model.eval()
    if item_text is None:
        tokens = tokenize_texts(tokenizer, list(catalog.item_texts), spec.max_length)
        item_text = model.encode_texts(tokens, batch_size)
    text = item_text.detach().cpu()
    rows = torch.arange(len(text))
    facts = None if head.knowledge is None else head.knowledge.facts  # every item is trained
    items = item_vectors(head, text, rows, spec.head["num_items"], facts, device)
    seen = histories(catalog)
    labels = histories(catalog, catalog.seen_labels) if catalog.seen_labels is not None else None
    user_rows = range(len(catalog.user_ids))
    users = user_table(
        head,
        lambda: items,
        [seen[u] for u in user_rows],
        None if labels is None else [labels[u] for u in user_rows],
        spec.head.get("num_users", 0) if head.traits.user_table else 0,
        device,
    )
    return exact_vectors(head, items, users, spec.task), numpy32(text)
