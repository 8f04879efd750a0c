"""Save and load a trained recommender as a folder of JSON and safetensors files (never pickle).

Layout (format 2)::

    peftrec.json        format version and the model's spec (peftrec.spec.ModelSpec)
    README.md           a model card: backbone, method, task, data, metrics
    adapter/            PEFT's own adapter format, or backbone.safetensors (top_layers, full)
    base.safetensors    a randomly initialised backbone's base weights (backbone.init=random)
    head.safetensors    towers and head
    tokenizer/          the tokenizer the model was trained with
    catalog.json        user ids, item ids, texts and fields (the id maps), the rating scale
    seen.safetensors    known interactions (user, item index pairs), to exclude seen items
    users.safetensors   users added or updated after training (Recommender.save_pretrained)
    config.yaml         the resolved training config

:func:`required_files` says which of these a spec needs; loading refuses a folder that lacks
one, names it, and checks that the catalogue matches the head. Format-1 folders (peftrec 0.1
before the spec) still load; their backbone dtype was not recorded and is float32.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import PeftModel
from safetensors.torch import save_file

from . import __version__
from .adapters import adapter_state
from .assembly import assemble, read_safetensors
from .files import write_folder_atomic
from .model import RecModel
from .spec import ArtifactError, ModelSpec, SpecError, spec_from_format1
from .tasks import task_of

FORMAT = "peftrec"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
UNSAFE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
PEFT_FILES = ("adapter/adapter_config.json", "adapter/adapter_model.safetensors")

__all__ = ["ArtifactError", "Catalog", "load_artifact", "required_files", "save_artifact"]


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
    user_state: dict[str, torch.Tensor] | None = None
    """The whole user table and what refits it, when users were added or updated after training."""
    knowledge: dict | None = None
    """A knowledge model's vocabulary: ``relations`` (all, pre_release), ``group_map``,
    ``groups`` and ``entities`` (the rows of its entity table), to read new items' facts."""
    item_facts: torch.Tensor | None = None
    """Entity rows ``(items, groups, width)`` of the items beyond the head's table."""


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
    return files


def save_artifact(
    folder: str | Path,
    model: RecModel,
    tokenizer,
    catalog: Catalog,
    *,
    config_yaml: str = "",
    card: dict[str, Any] | None = None,
) -> Path:
    """Write the model to ``folder`` atomically: a crash mid-save leaves any previous one intact.

    ``card`` (data, protocol, metrics ...) goes into ``README.md`` and ``peftrec.json``.
    """
    spec = model.spec
    if spec is None:
        raise ValueError(
            "save_artifact: the model has no spec (build it with peftrec.assembly.assemble)"
        )
    check_catalog(catalog, spec, Path(folder) / "catalog.json")

    def fill(tmp: Path) -> None:
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "peftrec_version": __version__,
            "spec": spec.to_dict(),
            "card": card or {},
        }
        (tmp / "peftrec.json").write_text(json.dumps(meta, indent=2))
        (tmp / "README.md").write_text(model_card(spec, card or {}))
        if model.random_base is not None:  # random base weights exist nowhere else
            save_file(
                {k: v.cpu().contiguous() for k, v in model.random_base.items()},
                tmp / "base.safetensors",
            )
        if isinstance(model.backbone, PeftModel):
            model.backbone.save_pretrained(tmp / "adapter")
            make_portable(tmp / "adapter", spec)
        elif (state := adapter_state(model.backbone)) is not None:
            (tmp / "adapter").mkdir()
            save_file(state, tmp / "adapter" / "backbone.safetensors")
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in model.head.state_dict().items()},
            tmp / "head.safetensors",
        )
        tokenizer.save_pretrained(tmp / "tokenizer")
        catalog_json = {
            "user_ids": catalog.user_ids,
            "item_ids": catalog.item_ids,
            "item_texts": catalog.item_texts,
            "user_texts": catalog.user_texts,
            "item_fields": catalog.item_fields,
            "rating_scale": list(catalog.rating_scale) if catalog.rating_scale else None,
            "knowledge": catalog.knowledge,
        }
        (tmp / "catalog.json").write_text(json.dumps(catalog_json, ensure_ascii=False))
        save_file(
            {
                "users": torch.as_tensor(np.asarray(catalog.seen_users), dtype=torch.int64),
                "items": torch.as_tensor(np.asarray(catalog.seen_items), dtype=torch.int64),
            },
            tmp / "seen.safetensors",
        )
        if catalog.item_facts is not None:
            save_file({"facts": catalog.item_facts.contiguous()}, tmp / "items.safetensors")
        if catalog.user_state is not None:
            save_file(
                {k: v.contiguous() for k, v in catalog.user_state.items()},
                tmp / "users.safetensors",
            )
        (tmp / "config.yaml").write_text(config_yaml)
        missing = [f for f in required_files(spec) if not (tmp / f).exists()]
        if missing:
            raise ArtifactError(
                f"save_artifact: the {spec.adapter.method} model wrote no {', '.join(missing)}"
            )

    return write_folder_atomic(folder, fill)


def make_portable(adapter_dir: Path, spec: ModelSpec) -> None:
    """PEFT records where the base model was on the training machine (an absolute path into its
    virtualenv for ``minilm``): name the backbone as the spec does, and drop PEFT's README."""
    config_path = adapter_dir / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = (
        spec.backbone if not Path(spec.backbone).is_absolute() else None
    )
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True))
    (adapter_dir / "README.md").unlink(missing_ok=True)


def model_card(spec: ModelSpec, card: dict[str, Any]) -> str:
    """A short Markdown card: what the model is, what it was trained on, how well it did."""
    lines = [
        f"# peftrec {spec.task} model",
        "",
        f"- task: {spec.task} ({task_of(spec.task).summary})",
        f"- backbone: `{spec.backbone}` ({spec.model_type}, {spec.dtype}, {spec.pooling} pooling, "
        f"{'pretrained' if spec.init == 'pretrained' else 'randomly initialised'})",
        f"- adaptation: {spec.adapter.method}"
        + (f", {spec.adapter.quant_bits}-bit base" if spec.adapter.quant_bits else ""),
        f"- catalogue: {spec.head['num_items']} items"
        + (
            f", {spec.head['num_users']} users"
            if "num_users" in spec.head
            else ", users as histories"
        ),
    ]
    if card.get("data"):
        lines.append(f"- data: {card['data']}")
    if card.get("protocol"):
        lines.append(f"- protocol: {card['protocol']}")
    metrics = card.get("metrics") or {}
    if metrics:
        lines += ["", "| metric | value |", "|---|---|"]
        lines += [
            f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |"
            for k, v in metrics.items()
        ]
    lines += ["", "Load it with `peftrec.Recommender.from_pretrained(folder)`."]
    return "\n".join(lines) + "\n"


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
    task_of(spec.task)
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
    if problems:
        raise ArtifactError(f"{where}: does not match the model ({'; '.join(problems)})")


def load_artifact(
    folder: str | Path, *, backbone: str | None = None, trust_remote_code: bool = False
):
    """Load ``(model, tokenizer, catalog, meta)`` from a folder written by :func:`save_artifact`.

    ``backbone`` overrides where the base weights come from (a local copy of the same model).
    ``meta`` is ``peftrec.json`` with the spec as an object (``meta["spec"]``).
    """
    folder = Path(folder)
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
    catalog = read_catalog(folder)
    check_catalog(catalog, spec, folder / "catalog.json")
    model, tokenizer = assemble(
        spec, saved=folder, base=backbone, trust_remote_code=trust_remote_code
    )
    config_yaml = (folder / "config.yaml").read_text() if (folder / "config.yaml").is_file() else ""
    return model, tokenizer, catalog, {**meta, "spec": spec, "config_yaml": config_yaml}


def read_catalog(folder: Path) -> Catalog:
    raw = read_json(folder / "catalog.json")
    seen = read_safetensors(folder / "seen.safetensors")
    users, items = folder / "users.safetensors", folder / "items.safetensors"
    try:
        scale = raw.get("rating_scale")
        return Catalog(
            user_ids=list(raw["user_ids"]),
            item_ids=list(raw["item_ids"]),
            item_texts=list(raw["item_texts"]),
            user_texts=raw.get("user_texts"),
            seen_users=seen["users"].numpy(),
            seen_items=seen["items"].numpy(),
            item_fields=raw.get("item_fields"),
            rating_scale=tuple(scale) if scale else None,
            user_state=read_safetensors(users) if users.is_file() else None,
            knowledge=raw.get("knowledge"),
            item_facts=read_safetensors(items)["facts"] if items.is_file() else None,
        )
    except (KeyError, TypeError) as err:
        raise ArtifactError(
            f"{folder / 'catalog.json'} or seen.safetensors: missing field {err}"
        ) from None
