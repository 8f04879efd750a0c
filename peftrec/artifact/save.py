"""Save and load a trained recommender as a folder of JSON and safetensors files (never pickle).

Layout (format 2)::

    peftrec.json        format version and the model's spec (peftrec.models.spec.ModelSpec)
    README.md           a model card: backbone, method, task, data, metrics
    adapter/            PEFT's own adapter format, or backbone.safetensors (top_layers, full)
    base.safetensors    a randomly initialised backbone's base weights (backbone.init=random)
    merged.safetensors  the base weights merged parent adapters changed (train.warm_start=merge)
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import PeftModel
from safetensors.torch import save_file

from peftrec import __version__
from peftrec.artifact.folder import (
    FORMAT,
    FORMAT_VERSION,
    Catalog,
    check_catalog,
    check_folder,
    read_catalog,
    read_spec,
    required_files,
)
from peftrec.artifact.vectors import ServingVectors, write_serving
from peftrec.files import write_folder_atomic
from peftrec.models.adapters import adapter_state
from peftrec.models.assembly import assemble
from peftrec.models.network import RecModel
from peftrec.models.spec import ArtifactError, ModelSpec
from peftrec.tasks import task_of

__all__ = [
    "ArtifactError",
    "Catalog",
    "load_artifact",
    "read_spec",
    "required_files",
    "save_artifact",
]


def save_artifact(
    folder: str | Path,
    model: RecModel,
    tokenizer,
    catalog: Catalog,
    *,
    config_yaml: str = "",
    card: dict[str, Any] | None = None,
    vectors: ServingVectors | None = None,
    item_text: np.ndarray | None = None,
    extra: Callable[[Path], None] | None = None,
) -> Path:
    """Write the model to ``folder`` atomically: a crash mid-save leaves any previous one intact.

    ``card`` (data, protocol, metrics ...) goes into ``README.md`` and ``peftrec.json``.
    ``vectors`` are what an app serves, computed by the caller and already checked against the
    head's scores (:func:`peftrec.artifact.head_vectors.trained_vectors` for a trained model, the
    app's
    engine for a changed one), with ``item_text``, the catalogue's pooled text encodings; they
    go into ``serving.safetensors`` with a digest of the files they came from. Without them the
    folder has none, and an app loads the network to score. ``extra(folder)`` writes files the
    digest leaves out (the app's item index) before the folder is published.
    """
    spec = model.spec
    if spec is None:
        raise ValueError(
            "save_artifact: the model has no spec (build it with peftrec.models.assembly.assemble)"
        )
    check_catalog(catalog, spec, Path(folder) / "catalog.json")
    if vectors is not None and item_text is None:
        raise ValueError("save_artifact: serving vectors come with the items' text encodings")

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
        if model.merged_base is not None:  # so are the weights a merged parent changed
            save_file(
                {k: v.cpu().contiguous() for k, v in model.merged_base.items()},
                tmp / "merged.safetensors",
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
            "domain": catalog.domain,
        }
        (tmp / "catalog.json").write_text(json.dumps(catalog_json, ensure_ascii=False))
        seen = {
            "users": torch.as_tensor(np.asarray(catalog.seen_users), dtype=torch.int64),
            "items": torch.as_tensor(np.asarray(catalog.seen_items), dtype=torch.int64),
        }
        if catalog.seen_labels is not None:
            seen["labels"] = torch.as_tensor(np.asarray(catalog.seen_labels), dtype=torch.int64)
        if catalog.seen_times is not None:
            seen["times"] = torch.as_tensor(np.asarray(catalog.seen_times), dtype=torch.float64)
        save_file(seen, tmp / "seen.safetensors")
        if catalog.item_facts is not None:
            save_file({"facts": catalog.item_facts.contiguous()}, tmp / "items.safetensors")
        if catalog.user_state is not None:
            save_file(
                {k: v.contiguous() for k, v in catalog.user_state.items()},
                tmp / "users.safetensors",
            )
        (tmp / "config.yaml").write_text(config_yaml)
        if vectors is not None:  # last: its digest covers the files written above
            write_serving(tmp, vectors, item_text)
        if extra is not None:
            extra(tmp)
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


def load_artifact(
    folder: str | Path, *, backbone: str | None = None, trust_remote_code: bool = False
):
    """Load ``(model, tokenizer, catalog, meta)`` from a folder written by :func:`save_artifact`.

    ``backbone`` overrides where the base weights come from (a local copy of the same model).
    ``meta`` is ``peftrec.json`` with the spec as an object (``meta["spec"]``).
    """
    folder = Path(folder)
    spec, meta = check_folder(folder)
    task_of(spec.task)
    catalog = read_catalog(folder)
    check_catalog(catalog, spec, folder / "catalog.json")
    if catalog.user_state is not None:
        catalog.user_state = {k: torch.from_numpy(v) for k, v in catalog.user_state.items()}
    if catalog.item_facts is not None:
        catalog.item_facts = torch.from_numpy(catalog.item_facts)
    model, tokenizer = assemble(
        spec, saved=folder, base=backbone, trust_remote_code=trust_remote_code
    )
    config_yaml = (folder / "config.yaml").read_text() if (folder / "config.yaml").is_file() else ""
    return model, tokenizer, catalog, {**meta, "spec": spec, "config_yaml": config_yaml}
