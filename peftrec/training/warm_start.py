"""Warm start (``train.init_from``): continue from a saved model on new data.

The new run's model is built for the new data (its users and items), then takes the parent's
weights: the adapter (or trained backbone blocks), and the towers and head, with the ID tables
matched by id: a user or item the parent knew keeps its learned row, a new one keeps its fresh
initialisation (text-only items need nothing). A knowledge model's entity rows are matched by
entity the same way. The parent must share the backbone, the adaptation method, the task and
every head setting but the table sizes; the new model's spec names its parent.

``mode`` (``train.warm_start``) says what happens to the parent's adapter: ``continue`` trains
it on; ``merge`` folds it into the backbone's base weights (PEFT's ``merge_and_unload``) and
keeps the new model's fresh adapter on top, so the new model saves the base weights merging
changed (``merged.safetensors``) next to its own adapter; ``towers`` loads it and freezes the
backbone, so only the towers and head train; ``head`` freezes the towers too, so only the head's
calibration scalars train (a preference head's, :attr:`PreferenceHead.calibration`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from peft import PeftModel, set_peft_model_state_dict

from peftrec.artifact.folder import check_folder, read_json
from peftrec.artifact.vectors import folder_digest, read_item_text, read_serving
from peftrec.models.assembly import assemble, read_safetensors, set_base_weights
from peftrec.models.network import RecModel
from peftrec.models.spec import ArtifactError, ModelSpec

NEIGHBOUR_DATA = ("neighbours.users", "neighbours.items", "neighbours.ratings")
logger = logging.getLogger(__name__)

TABLE_SIZES = ("num_users", "num_items", "knowledge")  # head settings that follow the data
Mode = Literal["continue", "merge", "towers", "head"]


@dataclass
class WarmStart:
    """What a warm start restored: rows matched by id, and rows that are new."""

    users_kept: int
    users_new: int
    items_kept: int
    items_new: int
    biases: dict[str, tuple[torch.Tensor, np.ndarray, np.ndarray]] = field(default_factory=dict)
    """The parent's bias tables with (new rows, parent rows), for :meth:`restore_biases`."""
    encodings: tuple[np.ndarray, torch.Tensor] | None = None
    """``(new rows, pooled encodings)`` the parent saved for the items whose text is unchanged:
    what the new model encodes them as before it trains."""

    def encode_items(self, model: RecModel, tokens: list[list[int]], batch_size: int = 256):
        """The catalogue's pooled encodings before training: the parent's saved ones where the
        text is unchanged, the other items encoded (a daily update encodes only its new items)."""
        if self.encodings is None:
            return model.encode_texts(tokens, batch_size)
        rows, saved = self.encodings
        out = model.encode_texts(tokens, batch_size, np.setdiff1d(np.arange(len(tokens)), rows))
        out[torch.as_tensor(rows)] = saved
        return out

    @torch.no_grad()
    def restore_biases(self, head: torch.nn.Module) -> None:
        """Put the parent's biases back on the users and items it knew (and its global mean),
        after a recipe initialised every bias from the new window's averages, so that only the
        new users and items start from those."""
        own = head.state_dict()
        for name, (value, new, old) in self.biases.items():
            if name == "global_mean":
                own[name].copy_(value)
            else:
                copy_rows(own[name], value, new, old)


ADDED_HEAD_OPTIONS = {"content": False}
"""Head options added after models were saved without them, with the value such a model has."""


def check_parent(parent: ModelSpec, spec: ModelSpec, folder: Path) -> None:
    """Refuse a parent that differs from the new model in what a warm start cannot bridge."""
    differences = [
        f"{name}: {a!r} in the parent, {b!r} now"
        for name, a, b in (
            ("task", parent.task, spec.task),
            ("backbone", parent.backbone, spec.backbone),
            ("backbone type", parent.model_type, spec.model_type),
            # merged parents are continued too: the merged weights travel with the model
            ("adapter", replace(parent.adapter, merged=0), replace(spec.adapter, merged=0)),
            ("pooling", parent.pooling, spec.pooling),
            ("init", parent.init, spec.init),
        )
        if a != b
    ]
    for key in sorted(set(parent.head) | set(spec.head)):
        was = parent.head.get(key, ADDED_HEAD_OPTIONS.get(key))
        now = spec.head.get(key, ADDED_HEAD_OPTIONS.get(key))
        if key not in TABLE_SIZES and was != now:
            differences.append(f"head.{key}: {was!r} in the parent, {now!r} now")
    if differences:
        raise ArtifactError(
            f"train.init_from={folder}: a warm start continues the same model, and this one "
            f"differs: {'; '.join(differences)}"
        )


def rows_by_id(parent_ids: list[str], ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(new rows, parent rows)`` of the ids both know."""
    where = {i: k for k, i in enumerate(parent_ids)}
    pairs = [(k, where[i]) for k, i in enumerate(ids) if i in where]
    if not pairs:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    new, old = zip(*pairs, strict=True)
    return np.asarray(new, dtype=np.int64), np.asarray(old, dtype=np.int64)


@torch.no_grad()
def warm_start(
    model: RecModel,
    folder: str | Path,
    user_ids: list[str],
    item_ids: list[str],
    entities: list[str] | None = None,
    mode: Mode = "continue",
    item_texts: list[str] | None = None,
    domain: str | None = None,
) -> WarmStart:
    """Load the parent in ``folder`` into ``model`` (built for ``user_ids``, ``item_ids`` and,
    for a knowledge model, ``entities``), its adapter as ``mode`` says; records the parent in
    ``model.spec``. With ``item_texts`` (the new catalogue's), the parent's saved encodings of
    unchanged texts are kept for :meth:`WarmStart.encode_items`. A parent of another ``domain``
    (data set) shares no ids with this one: its user, item and entity rows are dropped, what does
    not depend on the catalogue (adapter, towers' text parts, head scalars) carries over, except
    the weight of the items' bias read from their text (a preference head's ``w_b``), which starts
    at 0: what made a film good does not say what makes a book good (measured: it costs a movie
    model 0.010 AUC zero-shot on tallrec-book); training or ``warm_start=head`` may turn it on.
    A rating model's global mean is the new data's (ratings on another scale), not the parent's."""
    folder = Path(folder)
    parent, _ = check_folder(folder)
    check_parent(parent, model.spec, folder)
    catalog = read_json(folder / "catalog.json")
    load_base_weights(model, folder, parent)
    if mode == "merge":
        merge_parent(model, folder, parent)
    else:
        load_backbone_weights(model, folder, parent)
    if mode in ("towers", "head"):
        model.backbone.requires_grad_(False)
    if mode == "head":
        calibration = getattr(model.head, "calibration", None)
        if calibration is None:
            raise ValueError(
                f"train.warm_start=head trains a head's calibration scalars, and a "
                f"{model.spec.task} head has none (a preference head has): use towers"
            )
        for name, param in model.head.named_parameters():
            param.requires_grad_(name in calibration)

    state = read_safetensors(folder / "head.safetensors")
    other_domain = None not in (domain, catalog.get("domain")) and domain != catalog["domain"]
    if other_domain:
        logger.info("warm start across domains: %s -> %s", catalog["domain"], domain)
        catalog = {**catalog, "user_ids": [], "item_ids": [], "knowledge": None}
    users = rows_by_id(catalog["user_ids"], user_ids)
    items = rows_by_id(catalog["item_ids"], item_ids)
    parent_entities = (catalog.get("knowledge") or {}).get("entities") or []
    ents = rows_by_id(parent_entities, entities or [])
    own = model.head.state_dict()
    for name, value in state.items():
        if name in NEIGHBOUR_DATA:
            continue  # the ratings a fact-neighbour term reads are the new data's (at fold)
        target = own[name]
        if name.startswith("knowledge.") and name.endswith(".weight"):
            # entity rows by entity; the per-group "none" rows after them by position
            groups = parent.head["knowledge"]["groups"]
            copy_rows(target, value, *ents)
            target[-groups:] = value[-groups:]
        elif name == "knowledge.facts" or name == "user_text":
            continue  # rebuilt from the new data
        elif name.startswith("user_") and value.dim() and len(value) == parent.head["num_users"]:
            copy_rows(target, value, *users)
        elif name.startswith("item_") and value.dim() and len(value) == parent.head["num_items"]:
            copy_rows(target, value, *items)
        elif target.shape == value.shape:
            target.copy_(value)
        else:
            raise ArtifactError(
                f"{folder / 'head.safetensors'}: {name} has shape {tuple(value.shape)}, the new "
                f"model's {tuple(target.shape)}"
            )
    if other_domain and "item_weight" in own:
        own["item_weight"].zero_()
    model.spec.parent = {"folder": folder.name, "digest": folder_digest(folder), "mode": mode}
    done = WarmStart(
        len(users[0]), len(user_ids) - len(users[0]), len(items[0]), len(item_ids) - len(items[0])
    )
    for name, rows in (("user_bias.weight", users), ("item_bias.weight", items)):
        if name in state:
            done.biases[name] = (state[name], *rows)
    if "global_mean" in state and not other_domain:  # another domain: its own scale and mean
        done.biases["global_mean"] = (state["global_mean"], *users)
    if item_texts is not None and not other_domain and parent.max_length == model.spec.max_length:
        done.encodings = saved_encodings(folder, catalog, item_ids, item_texts)
    logger.info(
        "warm start (%s) from %s: %d users and %d items continue, %d and %d are new",
        mode,
        folder,
        done.users_kept,
        done.items_kept,
        done.users_new,
        done.items_new,
    )
    return done


def saved_encodings(
    folder: Path, catalog: dict, item_ids: list[str], item_texts: list[str]
) -> tuple[np.ndarray, torch.Tensor] | None:
    """``(new rows, encodings)`` of the items the parent saved an encoding of, with the same
    text; None when its serving file is missing or no longer matches its weights."""
    if read_serving(folder, len(catalog["user_ids"]), len(catalog["item_ids"])) is None:
        return None
    saved = read_item_text(folder)
    known = zip(catalog["item_ids"], catalog["item_texts"], strict=True)
    where = {pair: k for k, pair in enumerate(known)}
    pairs = [
        (k, where[p]) for k, p in enumerate(zip(item_ids, item_texts, strict=True)) if p in where
    ]
    if saved is None or not pairs:
        return None
    new, old = (np.asarray(x, dtype=np.int64) for x in zip(*pairs, strict=True))
    return new, torch.from_numpy(saved[old])


def copy_rows(target: torch.Tensor, source: torch.Tensor, new: np.ndarray, old: np.ndarray):
    if len(new):
        target[torch.as_tensor(new)] = source[torch.as_tensor(old)].to(target.dtype)


def load_base_weights(model: RecModel, folder: Path, parent: ModelSpec) -> None:
    """The base weights that exist only in the parent's folder: a random initialisation's
    (``base.safetensors``) and those earlier merges changed (``merged.safetensors``)."""
    if parent.init == "random":
        model.random_base = read_safetensors(folder / "base.safetensors")
        set_base_weights(model.backbone, model.random_base, folder / "base.safetensors")
    if parent.adapter.merged:
        model.merged_base = read_safetensors(folder / "merged.safetensors")
        set_base_weights(model.backbone, model.merged_base, folder / "merged.safetensors")
        model.spec.adapter.merged = parent.adapter.merged


def merge_parent(model: RecModel, folder: Path, parent: ModelSpec) -> None:
    """The parent's adapter merged into the new model's base weights, under its fresh adapter:
    the new model encodes as the parent did, and trains an adapter of its own."""
    if not isinstance(model.backbone, PeftModel):
        raise ArtifactError(f"train.init_from={folder}: the new model has no PEFT adapter")
    old, _ = assemble(parent, saved=folder)
    if old.backbone.peft_config["default"].is_prompt_learning:
        raise ArtifactError(
            f"train.warm_start=merge: the parent's {old.backbone.peft_config['default'].peft_type}"
            " adapter adds virtual tokens, which do not merge into weights; use continue"
        )
    merged = old.backbone.merge_and_unload().state_dict()
    base = model.backbone.get_base_model().state_dict()
    current = {name.replace(".base_layer", ""): value for name, value in base.items()}
    changed = {
        name: value.detach().clone()
        for name, value in merged.items()
        if name in current and not torch.equal(current[name], value)
    }
    set_base_weights(model.backbone, changed, folder / "adapter")
    model.merged_base = {**(model.merged_base or {}), **changed}
    model.spec.adapter.merged = parent.adapter.merged + 1
    logger.info("merged the parent's adapter into %d base weights", len(changed))


def load_backbone_weights(model: RecModel, folder: Path, parent: ModelSpec) -> None:
    """The parent's adapter (PEFT) or trained backbone weights, into the new, trainable model."""
    method = parent.adapter.method
    if method == "frozen":
        return
    if method in ("top_layers", "full"):
        state = read_safetensors(folder / "adapter" / "backbone.safetensors")
        missing = set(state) - set(dict(model.backbone.named_parameters()))
        if missing:
            raise ArtifactError(
                f"{folder / 'adapter' / 'backbone.safetensors'}: weights "
                f"{sorted(missing)[:3]} are not in the new backbone"
            )
        model.backbone.load_state_dict(state, strict=False)
        return
    if not isinstance(model.backbone, PeftModel):
        raise ArtifactError(f"train.init_from={folder}: the new model has no PEFT adapter to load")
    try:
        result = set_peft_model_state_dict(
            model.backbone, read_safetensors(folder / "adapter" / "adapter_model.safetensors")
        )
    except RuntimeError as err:  # e.g. another LoRA rank
        raise ArtifactError(f"{folder / 'adapter'}: does not fit the new adapter ({err})") from None
    unexpected = getattr(result, "unexpected_keys", None) or []
    if unexpected:
        raise ArtifactError(
            f"{folder / 'adapter'}: adapter weights {unexpected[:3]} do not fit the new adapter"
        )
