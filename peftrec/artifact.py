"""Save and load a trained recommender as a folder of JSON and safetensors files (never pickle).

Layout::

    peftrec.json        format version, backbone, pooling, adapter method, head sizes
    adapter/            PEFT's own adapter format (LoRA ...), or backbone.safetensors (full)
    head.safetensors    towers and regression head
    tokenizer/          the tokenizer the model was trained with
    catalog.json        user ids, item ids and item texts (the id maps)
    seen.safetensors    training interactions (user, item index pairs), to exclude seen items
    config.yaml         the resolved training config
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from peft import PeftModel
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import __version__
from .adapters import adapter_state, disable_4bit_cpu_repacking, quantization_config
from .backbones import load_backbone, load_tokenizer
from .heads import HEADS, RankingHead
from .model import RecModel

FORMAT = "peftrec"
FORMAT_VERSION = 1
UNSAFE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


class ArtifactError(ValueError):
    """A saved model folder that cannot be loaded safely: missing, corrupt or mismatched files."""


@dataclass
class Catalog:
    """What the model knows by id: users, items with their texts, and who rated what in training."""

    user_ids: list[str]
    item_ids: list[str]
    item_texts: list[str]
    seen_users: np.ndarray
    seen_items: np.ndarray
    user_texts: list[str] | None = None


def save_artifact(folder: str | Path, model: RecModel, tokenizer, catalog: Catalog, *, backbone: str,
                  method: str, max_length: int, config_yaml: str = "") -> Path:
    """Write the model to ``folder`` atomically: a crash mid-save leaves any previous one intact."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; a saved model is an ordinary folder
    try:
        head = model.head
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "peftrec_version": __version__,
            "task": "ranking" if isinstance(head, RankingHead) else "rating",
            "backbone": backbone,
            "model_type": model_config(model.backbone).model_type,
            "pooling": model.pooling,
            "max_length": max_length,
            "adapter": method,
            "init": "random" if model.random_base is not None else "pretrained",
            "quant_bits": quant_bits(model_config(model.backbone)),
            "head": {
                "text_dim": head.text_dim,
                "num_users": head.user_emb.num_embeddings,
                "num_items": len(catalog.item_ids),
                "dim": head.dim,
                "item_ids": head.item_emb is not None,
                "item_text": head.item_proj is not None,
                "user_text_dim": head.user_text_proj.in_features if head.user_text_proj is not None else None,
            },
        }
        (tmp / "peftrec.json").write_text(json.dumps(meta, indent=2))
        if model.random_base is not None:  # random base weights exist nowhere else
            save_file({k: v.cpu().contiguous() for k, v in model.random_base.items()}, tmp / "base.safetensors")
        if isinstance(model.backbone, PeftModel):
            model.backbone.save_pretrained(tmp / "adapter")
        elif (state := adapter_state(model.backbone)) is not None:
            (tmp / "adapter").mkdir()
            save_file(state, tmp / "adapter" / "backbone.safetensors")
        save_file({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}, tmp / "head.safetensors")
        tokenizer.save_pretrained(tmp / "tokenizer")
        catalog_json = {"user_ids": catalog.user_ids, "item_ids": catalog.item_ids,
                        "item_texts": catalog.item_texts, "user_texts": catalog.user_texts}
        (tmp / "catalog.json").write_text(json.dumps(catalog_json, ensure_ascii=False))
        save_file({"users": torch.as_tensor(catalog.seen_users, dtype=torch.int64),
                   "items": torch.as_tensor(catalog.seen_items, dtype=torch.int64)}, tmp / "seen.safetensors")
        (tmp / "config.yaml").write_text(config_yaml)
        replace_folder(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def replace_folder(new: Path, target: Path) -> None:
    """Swap ``new`` into place of ``target``; the old folder is removed only once ``new`` is there."""
    if not target.exists():
        os.replace(new, target)
        return
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def quant_bits(config) -> int | None:
    """4 or 8 for a backbone loaded with bitsandbytes, else None."""
    quantization = getattr(config, "quantization_config", None)
    if quantization is None:
        return None
    if isinstance(quantization, dict):
        return 4 if quantization.get("load_in_4bit") else 8
    return 4 if quantization.load_in_4bit else 8


def model_config(backbone):
    return backbone.get_base_model().config if isinstance(backbone, PeftModel) else backbone.config


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing; is {path.parent} a folder saved by peftrec?") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{path}: not valid JSON ({err})") from None


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ArtifactError(f"{path}: missing")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise ArtifactError(f"{path}: corrupt or truncated safetensors file ({err})") from None


def refuse_pickles(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.suffix in UNSAFE_SUFFIXES:
            raise ArtifactError(f"{path}: refusing to load a pickle-based file; peftrec loads safetensors only")


def load_artifact(folder: str | Path, *, backbone: str | None = None, trust_remote_code: bool = False):
    """Load ``(model, tokenizer, catalog, meta)`` from a folder written by :func:`save_artifact`.

    ``backbone`` overrides where the base weights come from (a local copy of the same model).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ArtifactError(f"{folder}: no such model folder")
    meta = read_json(folder / "peftrec.json")
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{folder / 'peftrec.json'}: not a peftrec format-{FORMAT_VERSION} model")
    refuse_pickles(folder)
    tokenizer = load_tokenizer(str(folder / "tokenizer"))
    quantization = None
    if meta.get("quant_bits"):
        quantization = quantization_config(SimpleNamespace(method="qlora", quant_bits=meta["quant_bits"]))
    init = meta.get("init", "pretrained")
    base = load_backbone(backbone or meta["backbone"], trust_remote_code=trust_remote_code,
                         quantization_config=quantization, init=init)
    random_base = None
    if init == "random":
        random_base = read_safetensors(folder / "base.safetensors")
        try:
            base.load_state_dict(random_base)
        except RuntimeError as err:
            raise ArtifactError(f"{folder / 'base.safetensors'}: does not fit backbone {meta['backbone']} ({err})") from None
    disable_4bit_cpu_repacking(base)
    if base.config.model_type != meta["model_type"]:
        raise ArtifactError(
            f"{folder}: trained on a '{meta['model_type']}' backbone, but {backbone or meta['backbone']} "
            f"is a '{base.config.model_type}'"
        )
    adapter_dir = folder / "adapter"
    if (adapter_dir / "adapter_config.json").is_file():
        if not (adapter_dir / "adapter_model.safetensors").is_file():
            raise ArtifactError(f"{adapter_dir}: adapter_model.safetensors is missing")
        read_safetensors(adapter_dir / "adapter_model.safetensors")  # fail early, with the file name
        try:
            base = PeftModel.from_pretrained(base, adapter_dir)
        except (RuntimeError, ValueError, KeyError) as err:
            raise ArtifactError(f"{adapter_dir}: adapter does not fit backbone {meta['backbone']} ({err})") from None
    elif (adapter_dir / "backbone.safetensors").is_file():
        state = read_safetensors(adapter_dir / "backbone.safetensors")
        unknown = set(state) - set(dict(base.named_parameters()))
        if unknown:
            raise ArtifactError(f"{adapter_dir / 'backbone.safetensors'}: weights {sorted(unknown)[:3]} "
                                f"are not in backbone {meta['backbone']}")
        base.load_state_dict(state, strict=False)
    base.eval()
    if meta.get("task") not in HEADS:
        raise ArtifactError(f"{folder / 'peftrec.json'}: unknown task {meta.get('task')!r}")
    try:
        head = HEADS[meta["task"]](**meta["head"])
    except TypeError as err:
        raise ArtifactError(f"{folder / 'peftrec.json'}: bad head settings {meta['head']!r} ({err})") from None
    try:
        head.load_state_dict(read_safetensors(folder / "head.safetensors"))
    except RuntimeError as err:
        raise ArtifactError(f"{folder / 'head.safetensors'}: does not match peftrec.json ({err})") from None
    head.eval()
    catalog_json = read_json(folder / "catalog.json")
    seen = read_safetensors(folder / "seen.safetensors")
    catalog = Catalog(
        user_ids=catalog_json["user_ids"], item_ids=catalog_json["item_ids"],
        item_texts=catalog_json["item_texts"], user_texts=catalog_json.get("user_texts"),
        seen_users=seen["users"].numpy(), seen_items=seen["items"].numpy(),
    )
    if len(catalog.item_ids) != meta["head"]["num_items"] or len(catalog.user_ids) != meta["head"]["num_users"]:
        raise ArtifactError(f"{folder / 'catalog.json'}: id lists do not match the head's sizes")
    model = RecModel(base, head, meta["pooling"], tokenizer.pad_token_id)
    model.random_base = random_base  # saving it again keeps the random base weights
    return model, tokenizer, catalog, meta
