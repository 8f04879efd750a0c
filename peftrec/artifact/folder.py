"""A saved model folder, read without torch: its spec, catalogue and known interactions.

What an app needs to serve a model (:class:`peftrec.Recommender`) is JSON and a few arrays;
this module reads and checks them with numpy and safetensors alone, so loading a model to
serve it imports neither torch nor transformers. :mod:`peftrec.artifact.save` writes folders and
loads the network itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Union

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file

from peftrec import __version__
from peftrec.models.spec import ArtifactError, ModelSpec, SpecError, spec_from_format1

if TYPE_CHECKING:
    import torch

Array = Union[np.ndarray, "torch.Tensor"]
"""numpy when read from a folder; torch tensors when a model in memory hands them over."""

FORMAT = "peftrec"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
UNSAFE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
PEFT_FILES = ("adapter/adapter_config.json", "adapter/adapter_model.safetensors")


@dataclass
class Catalog:
    """What the model knows by id: users, items with their texts, and who rated what.

    The first ``spec.head["num_items"]`` items (and users) are the rows of the head's ID tables;
    items after them were added by text, users after them by profile, ratings or interactions
    (their vectors are in ``user_state``).
    """

    user_ids: list[str]
    item_ids: list[str]
    item_texts: list[str]
    seen_users: np.ndarray
    seen_items: np.ndarray
    user_texts: list[str] | None = None
    item_fields: dict[str, list[str]] | None = None
    """Per-item fields (title, year, genres, ...) aligned with ``item_ids``, for display."""
    rating_scale: tuple[float, float] | None = None
    """Lowest and highest training rating (rating models): inputs are checked and predictions
    clipped against it."""
    user_state: dict[str, Array] | None = None
    """The whole user table and what refits it, when users were added or updated after training."""
    knowledge: dict | None = None
    """A knowledge model's vocabulary: ``relations`` (all, pre_release), ``group_map``,
    ``groups`` and ``entities`` (the rows of its entity table), to read new items' facts."""
    item_facts: Array | None = None
    """Entity rows ``(items, groups, width)`` of the items beyond the head's table."""
    seen_labels: Array | None = None
    """A preference model: 1 where the user liked the seen item (aligned with ``seen_items``)."""
    seen_times: Array | None = None
    """When each seen interaction happened (seconds; a history model weighing recent popularity,
    ``sequence.recency``, counts them), aligned with ``seen_items``."""
    domain: str | None = None
    """The data set the ids belong to (``data.dataset``; None in folders saved before domains):
    a warm start from a model of another domain matches no user or item by id."""


def required_files(spec: ModelSpec) -> list[str]:
    """The files (relative paths) a model folder with this spec must hold."""
    files = ["peftrec.json", "head.safetensors", "tokenizer", "catalog.json", "seen.safetensors"]
    method = spec.adapter.method
    if method in ("top_layers", "full"):
        files.append("adapter/backbone.safetensors")
    elif method != "frozen":
        files += PEFT_FILES
    if spec.init == "random":
        files.append("base.safetensors")
    if spec.adapter.merged:
        files.append("merged.safetensors")
    return files


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(
            f"{path}: missing; is {path.parent} a folder saved by peftrec?"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{path}: not valid JSON ({err})") from None


def refuse_pickles(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.suffix in UNSAFE_SUFFIXES:
            raise ArtifactError(
                f"{path}: refusing to load a pickle-based file; peftrec loads safetensors only"
            )


def read_spec(folder: Path) -> tuple[ModelSpec, dict]:
    """The spec in ``folder/peftrec.json`` (format 1 or 2) and the whole file."""
    path = folder / "peftrec.json"
    meta = read_json(path)
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ArtifactError(f'{path}: not a peftrec model file (no "format": "{FORMAT}")')
    if version not in READABLE_VERSIONS:
        raise ArtifactError(
            f"{path}: a peftrec format-{version} model; this peftrec "
            f"({__version__}) reads formats {READABLE_VERSIONS[0]}-{READABLE_VERSIONS[-1]}: "
            f"install the peftrec that wrote it ({meta.get('peftrec_version', 'unknown')})"
        )
    try:
        spec = (
            spec_from_format1(meta)
            if version == 1
            else ModelSpec.from_dict(meta.get("spec"), f"{path}: spec")
        )
    except (KeyError, TypeError) as err:
        raise ArtifactError(f"{path}: incomplete model description ({err})") from None
    except SpecError as err:
        raise ArtifactError(str(err)) from None
    return spec, meta


def check_catalog(catalog: Catalog, spec: ModelSpec, where: Path) -> None:
    """The id lists and texts match the head's tables, ids are unique, seen pairs are in range."""
    head = spec.head
    problems = []
    if len(catalog.item_ids) < head["num_items"]:
        problems.append(
            f"{len(catalog.item_ids)} item ids for the head's {head['num_items']} items"
        )
    if len(catalog.item_texts) != len(catalog.item_ids):
        problems.append(
            f"{len(catalog.item_texts)} item texts for {len(catalog.item_ids)} item ids"
        )
    for name, values in (catalog.item_fields or {}).items():
        if len(values) != len(catalog.item_ids):
            problems.append(
                f"{len(values)} values of item field {name!r} for {len(catalog.item_ids)} item ids"
            )
    table = head.get("num_users")  # None: a history model, whose users are their histories
    if table is not None and len(catalog.user_ids) < table:
        problems.append(f"{len(catalog.user_ids)} user ids for the head's {table} users")
    state = catalog.user_state
    if (
        table is not None
        and len(catalog.user_ids) > table
        and (state is None or len(state.get("vectors", ())) != len(catalog.user_ids))
    ):
        problems.append(
            f"{len(catalog.user_ids) - table} users beyond the head's table without "
            "their vectors (users.safetensors)"
        )
    if catalog.user_texts is not None and len(catalog.user_texts) != len(catalog.user_ids):
        problems.append(
            f"{len(catalog.user_texts)} user texts for {len(catalog.user_ids)} user ids"
        )
    for kind, ids in (("item", catalog.item_ids), ("user", catalog.user_ids)):
        if len(set(ids)) != len(ids):
            problems.append(f"a {kind} id appears twice")
    users, items = np.asarray(catalog.seen_users), np.asarray(catalog.seen_items)
    if len(users) != len(items):
        problems.append("seen users and items differ in length")
    elif len(users) and (
        users.min() < 0
        or users.max() >= len(catalog.user_ids)
        or items.min() < 0
        or items.max() >= len(catalog.item_ids)
    ):
        problems.append("seen interactions point outside the id lists")
    if catalog.seen_times is not None and len(catalog.seen_times) != len(items):
        problems.append("seen times and items differ in length")
    if problems:
        raise ArtifactError(f"{where}: does not match the model ({'; '.join(problems)})")


def read_arrays(path: Path, framework: str = "np") -> dict:
    """A safetensors file as numpy arrays (``framework="pt"``: torch tensors, which imports
    torch), with an error naming the file."""
    if not path.is_file():
        raise ArtifactError(f"{path}: missing")
    if framework == "pt":
        from safetensors.torch import load_file as load_torch

        load = load_torch
    else:
        load = load_file
    try:
        return load(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise ArtifactError(f"{path}: corrupt or truncated safetensors file ({err})") from None


def histories(catalog: Catalog, values: Array | None = None) -> dict[int, np.ndarray]:
    """Each user's known items (or the aligned ``values``, e.g. ``seen_labels``) in the saved
    (time) order, for every user row (empty for a user without any)."""
    users = np.asarray(catalog.seen_users, dtype=np.int64)
    items = np.asarray(catalog.seen_items if values is None else values, dtype=np.int64)
    order = np.argsort(users, kind="stable")
    starts = np.searchsorted(users[order], np.arange(len(catalog.user_ids) + 1))
    return {u: items[order[starts[u] : starts[u + 1]]] for u in range(len(catalog.user_ids))}


def check_folder(folder: Path) -> tuple[ModelSpec, dict]:
    """The spec and ``peftrec.json`` of a model folder, after checking that every file the spec
    needs is there (naming the first one missing) and that nothing in it is a pickle."""
    if not folder.is_dir():
        raise ArtifactError(f"{folder}: no such model folder")
    spec, meta = read_spec(folder)
    missing = [f for f in required_files(spec) if not (folder / f).exists()]
    if missing:
        raise ArtifactError(
            f"{folder / missing[0]}: missing; a {spec.adapter.method} {spec.task} model needs "
            f"{', '.join(required_files(spec))}"
        )
    if not (folder / "tokenizer" / "tokenizer_config.json").is_file():
        raise ArtifactError(
            f"{folder / 'tokenizer' / 'tokenizer_config.json'}: missing; the tokenizer folder "
            "is incomplete"
        )
    refuse_pickles(folder)
    return spec, meta


def read_catalog(folder: Path) -> Catalog:
    """``catalog.json`` and the interaction files of a model folder (arrays as numpy)."""
    raw = read_json(folder / "catalog.json")
    seen = read_arrays(folder / "seen.safetensors")
    users, items = folder / "users.safetensors", folder / "items.safetensors"
    try:
        scale = raw.get("rating_scale")
        return Catalog(
            user_ids=list(raw["user_ids"]),
            item_ids=list(raw["item_ids"]),
            item_texts=list(raw["item_texts"]),
            user_texts=raw.get("user_texts"),
            seen_users=seen["users"],
            seen_items=seen["items"],
            item_fields=raw.get("item_fields"),
            rating_scale=tuple(scale) if scale else None,
            user_state=read_arrays(users) if users.is_file() else None,
            knowledge=raw.get("knowledge"),
            item_facts=read_arrays(items)["facts"] if items.is_file() else None,
            seen_labels=seen.get("labels"),
            seen_times=seen.get("times"),
            domain=raw.get("domain"),
        )
    except (KeyError, TypeError, AttributeError) as err:
        raise ArtifactError(
            f"{folder / 'catalog.json'} or seen.safetensors: missing field {err}"
        ) from None
