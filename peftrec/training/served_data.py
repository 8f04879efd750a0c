"""What a served model was told, as training data: ``peftrec update --state``.

A service keeps every acknowledged write in its state's log (:mod:`peftrec.app.state`). An update
that reads the log trains on the interactions file *and* what the service was told up to the
moment the update starts (the *cut*, the log's last sequence number then):

- items added or changed (``POST /items``): in the items file, with the text the service served
  (the update renders every item's text from a ``text`` column, so an item added by text alone
  trains as it was served);
- interactions (``POST /interactions``): rows of the interactions file, at the moment they were
  recorded, counting as ``interaction_rating`` (default: the file's highest rating), for the
  models that learn from interactions (ranking, sequential); a rating model needs ratings;
- ratings (``POST /ratings``, ``fold_in``): rows with their ratings; a user's last fold-in
  replaces the earlier ones, as it does when served.

The new model folder records the cut (``served_cut.json``), so a service that swaps to it replays
only the writes after it (:meth:`peftrec.app.recommender.Recommender.carry_over`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

from peftrec.app.state import ServedState
from peftrec.artifact.folder import read_json
from peftrec.artifact.vectors import folder_digest
from peftrec.data import load_files
from peftrec.data.errors import DataError

TEXT_FIELD = "text"
"""The items-file column an update reads each item's text from."""


class ServedData(NamedTuple):
    interactions: Path
    items: Path
    cut: dict[str, Any]  # what the new folder's served_cut.json holds
    notes: list[str]  # what was read, and what could not train


def served_data(
    model: Path,
    state: str | Path,
    data: Path,
    task: str,
    folder: Path,
    interaction_rating: float | None = None,
) -> ServedData:
    """The interactions file ``data`` and the model's catalogue merged with the writes of
    ``model``'s served ``state``, as an interactions and an items file in ``folder``."""
    digest = folder_digest(model)
    log = ServedState(state, digest)
    try:
        events = list(log.events(timed=True))
    finally:
        log.close()
    cut = {"state": log.url, "parent": digest, "seq": events[-1][0] if events else 0}
    if any(kind == "users" for _, kind, _, _ in events):
        raise DataError(
            f"{log.url}: the service added users by profile (POST /users), which an update cannot "
            "train on yet (a users file names fields, the service kept texts); update from "
            "files (--users) instead"
        )
    texts, fields = served_items(model, events)
    items_path = folder / "items.jsonl"
    with items_path.open("w", encoding="utf-8") as f:
        for item, text in texts.items():
            row = {"item_id": item, **fields.get(item, {}), TEXT_FIELD: text}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    try:
        dataset = load_files(data, items_path)
    except DataError as err:
        raise DataError(f"--data {data}: {err}") from None
    inter = dataset.interactions
    timed = inter.timestamps is not None
    rows = [
        interaction_row(
            dataset.user_ids[u],
            dataset.item_ids[i],
            float(r),
            float(inter.timestamps[k]) if timed else None,
        )
        for k, (u, i, r) in enumerate(zip(inter.users, inter.items, inter.ratings, strict=True))
    ]
    rating = float(inter.ratings.max()) if interaction_rating is None else interaction_rating
    added, notes = served_rows(events, task, rating, timed)
    rows += added
    interactions_path = folder / "interactions.jsonl"
    with interactions_path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    notes.insert(0, f"read {len(events)} served writes from {log.url} (up to write {cut['seq']})")
    return ServedData(interactions_path, items_path, cut, notes)


def interaction_row(user: str, item: str, rating: float, at: float | None) -> dict[str, Any]:
    """One row of the merged interactions file (a timestamp only where the data has them)."""
    row = {"user_id": user, "item_id": item, "rating": rating}
    return row if at is None else {**row, "timestamp": at}


def served_items(model: Path, events: list) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """Each item's served text and fields: the model's catalogue with the served items' writes
    applied in order."""
    catalog = read_json(model / "catalog.json")
    ids = catalog["item_ids"]
    texts = dict(zip(ids, catalog["item_texts"], strict=True))
    columns = catalog.get("item_fields") or {}
    fields = {
        item: {name: values[k] for name, values in columns.items() if name != TEXT_FIELD}
        for k, item in enumerate(ids)
    }
    for _, kind, payload, _ in events:
        if kind != "items":
            continue
        for item, text in payload["items"].items():
            if item != item.strip():
                raise DataError(
                    f"served item {item!r}: an id with surrounding spaces cannot be read back "
                    "from a data file (ids there are stripped)"
                )
            texts[item] = text
        for item, values in (payload.get("fields") or {}).items():
            fields.setdefault(item, {}).update(
                {k: str(v) for k, v in values.items() if k != TEXT_FIELD}
            )
    return texts, fields


def served_rows(
    events: list, task: str, interaction_rating: float, timed: bool
) -> tuple[list[dict], list[str]]:
    """Interaction rows of the served interactions and ratings (see the module)."""
    rows, folded, skipped = [], {}, 0
    for _, kind, payload, logged_at in events:
        at = payload.get("at", logged_at)
        if kind == "interactions":
            if task == "rating":
                skipped += sum(len(items) for items in payload["interactions"].values())
                continue
            for user, items in payload["interactions"].items():
                rows += [
                    interaction_row(user, item, interaction_rating, at if timed else None)
                    for item in items
                ]
        elif kind == "ratings":
            folded[payload["user"]] = (payload["ratings"], at)  # the last fold-in counts
    for user, (ratings, at) in folded.items():
        rows += [
            interaction_row(user, item, float(value), at if timed else None)
            for item, value in ratings.items()
        ]
    notes = [f"{len(rows)} served interactions and ratings added to the training data"]
    if skipped:
        notes.append(
            f"{skipped} served interactions without a rating were not trained on (a rating "
            "model learns from ratings; they stay seen items when served)"
        )
    return rows, notes
