"""Build the network a :class:`~peftrec.models.spec.ModelSpec` describes: one path for training and
loading.

    spec = spec_from_config(cfg, "rating", num_users=..., num_items=...)   # the whole spec
    model, tokenizer = assemble(spec, adapter=cfg.adapter)      # training: a new adapter
    model, tokenizer = assemble(spec, saved=folder)             # loading: the saved weights

Both run the same steps: tokenizer, backbone (dtype, quantization, init), adapter, gradient
checkpointing, the task's head, :class:`~peftrec.models.network.RecModel`. Loading also reads the
saved
adapter, base and head weights, each refused with an :class:`ArtifactError` that names the file.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from peft import PeftModel
from torch import nn

from peftrec.artifact.folder import read_arrays
from peftrec.models.adapters import apply_adapter, disable_4bit_cpu_repacking, quantization_config
from peftrec.models.backbones import backbone_config, default_pooling, load_backbone, load_tokenizer
from peftrec.models.knowledge_tower import KnowledgeVocabulary
from peftrec.models.network import RecModel
from peftrec.models.spec import AdapterSpec, ArtifactError, ModelSpec
from peftrec.models.tokens import tokenize_texts
from peftrec.tasks import task_of

logger = logging.getLogger(__name__)


def spec_from_config(
    cfg,
    task: str,
    *,
    num_users: int,
    num_items: int,
    vocabulary: KnowledgeVocabulary | None = None,
    extras: dict | None = None,
) -> ModelSpec:
    """The whole spec a recipe's config describes (``cfg``: a
    :class:`~peftrec.config.RecipeConfig`): the shared sections' head arguments, those the task
    adds (:attr:`peftrec.tasks.Task.head_options`) and, for a knowledge model
    (``model.knowledge``), the sizes of its knowledge tower from the run's ``vocabulary``."""
    spec = make_spec(
        cfg.backbone,
        cfg.adapter,
        cfg.model,
        task=task,
        num_users=num_users,
        num_items=num_items,
        max_length=cfg.data.max_length,
        extras=extras,
    )
    options = task_of(task).head_options
    if options is not None:
        spec.head = options(cfg, spec.head)
    if vocabulary is not None:
        spec.head["knowledge"] = {
            "groups": len(vocabulary.groups),
            "entities": len(vocabulary.entities),
            "width": vocabulary.width,
            "dropout": cfg.model.knowledge_dropout,
        }
    return spec


def make_spec(
    backbone,
    adapter,
    model,
    *,
    task: str,
    num_users: int,
    num_items: int,
    max_length: int = 64,
    extras: dict | None = None,
) -> ModelSpec:
    """The spec of the backbone, adapter and model config sections (reads the backbone's config
    file, not its weights)."""
    config = backbone_config(backbone.name, trust_remote_code=backbone.trust_remote_code)
    text_dim = config.hidden_size
    head = {
        "text_dim": text_dim,
        "num_users": num_users,
        "num_items": num_items,
        "dim": model.dim,
        "item_ids": model.item_ids,
        "item_text": model.item_text,
        "user_text_dim": text_dim if model.user_text else None,
        "dropout": model.dropout,
        "id_dropout": model.item_id_dropout,
    }
    if not task_of(task).traits.user_table:  # a user is their history: no table, no profile
        del head["num_users"], head["user_text_dim"]
    return ModelSpec(
        task=task,
        backbone=backbone.name,
        model_type=config.model_type,
        dtype=backbone.dtype,
        pooling=default_pooling(config) if backbone.pooling == "auto" else backbone.pooling,
        max_length=max_length,
        init=backbone.init,
        adapter=AdapterSpec(
            method=adapter.method,
            quant_bits=adapter.quant_bits if adapter.method == "qlora" else None,
            top_k_layers=adapter.top_k_layers if adapter.method == "top_layers" else None,
        ),
        head=head,
        gradient_checkpointing=backbone.gradient_checkpointing,
        extras=dict(extras or {}),
    )


def assemble(
    spec: ModelSpec,
    *,
    adapter=None,
    saved: str | Path | None = None,
    base: str | None = None,
    trust_remote_code: bool = False,
    backbone_dropout: float | None = None,
):
    """``(RecModel, tokenizer)`` for ``spec``.

    Pass ``adapter`` (an :class:`~peftrec.config.AdapterConfig`) to start training with a new
    adapter, or ``saved`` (a model folder) to load the trained weights. ``base`` overrides where
    the base weights come from (a local copy of ``spec.backbone``); ``backbone_dropout`` sets
    every dropout of a new model's backbone.
    """
    if (adapter is None) == (saved is None):
        raise ValueError("assemble: pass either adapter (a new model) or saved (a model folder)")
    task = task_of(spec.task)
    saved = Path(saved) if saved is not None else None
    tokenizer = load_tokenizer(
        str(saved / "tokenizer") if saved else spec.backbone, trust_remote_code=trust_remote_code
    )
    name = base or spec.backbone
    backbone = load_backbone(
        name,
        dtype=spec.dtype,
        trust_remote_code=trust_remote_code,
        quantization_config=quantization_config(spec.adapter),
        init=spec.init,
    )
    if backbone.config.model_type != spec.model_type:
        raise ArtifactError(
            f"{saved or 'spec'}: the model was built on a '{spec.model_type}' backbone, "
            f"but {name} is a '{backbone.config.model_type}'"
        )
    random_base = None
    if spec.init == "random":
        if saved is not None:  # random base weights exist nowhere but in the model folder
            random_base = read_safetensors(saved / "base.safetensors")
            try:
                backbone.load_state_dict(random_base)
            except RuntimeError as err:
                raise ArtifactError(
                    f"{saved / 'base.safetensors'}: does not fit backbone {name} ({err})"
                ) from None
        else:
            random_base = {k: v.detach().clone() for k, v in backbone.state_dict().items()}
    merged_base = None
    if saved is not None and spec.adapter.merged:  # merged parents' weights, under the adapter
        merged_base = read_safetensors(saved / "merged.safetensors")
        set_base_weights(backbone, merged_base, saved / "merged.safetensors")
    disable_4bit_cpu_repacking(backbone)
    if backbone_dropout is not None:  # e.g. 0: train on the same features the head warmed up on
        for module in backbone.modules():
            if isinstance(module, nn.Dropout):
                module.p = backbone_dropout
    head = task.head(**spec.head)
    if saved is None:
        probe = tokenize_texts(tokenizer, ["a short check text"], 16)
        before = RecModel(backbone, head, spec.pooling, tokenizer.pad_token_id).encode_texts(probe)
        backbone = apply_adapter(backbone, adapter)
    else:
        backbone = load_adapter(backbone, saved / "adapter", spec, name)
        load_head(head, saved / "head.safetensors")
        backbone.eval()
        head.eval()
    if spec.gradient_checkpointing:
        enable_gradient_checkpointing(backbone)
    model = RecModel(backbone, head, spec.pooling, tokenizer.pad_token_id, spec=spec)
    model.random_base = (
        random_base  # saved with the model: the random base weights exist nowhere else
    )
    model.merged_base = merged_base
    if (
        saved is None
        and isinstance(backbone, PeftModel)
        and backbone.peft_config["default"].is_prompt_learning
    ):
        # guard against prefix/prompt tuning silently doing nothing (e.g. a transformers release
        # that ignores past_key_values): the adapted encoding must differ from the base one
        if torch.allclose(model.encode_texts(probe), before):
            raise RuntimeError(
                "the prompt/prefix adapter does not change the backbone's output: this "
                "transformers/PEFT combination ignores it (peftrec pins transformers<5.40)"
            )
    return model, tokenizer


def build_model(
    backbone_cfg,
    adapter_cfg,
    model_cfg,
    *,
    num_users: int,
    num_items: int,
    task: str = "rating",
    max_length: int = 64,
):
    """``(RecModel, tokenizer)`` with a new adapter, from the backbone, adapter and model sections
    of a config: the spec they describe (:func:`make_spec`), assembled."""
    spec = make_spec(
        backbone_cfg,
        adapter_cfg,
        model_cfg,
        task=task,
        num_users=num_users,
        num_items=num_items,
        max_length=max_length,
    )
    return assemble(
        spec,
        adapter=adapter_cfg,
        trust_remote_code=backbone_cfg.trust_remote_code,
        backbone_dropout=backbone_cfg.dropout,
    )


def enable_gradient_checkpointing(backbone: nn.Module) -> None:
    """Recompute activations in the backward pass; non-reentrant, so adapters on frozen inputs
    still get their gradients."""
    base = backbone.get_base_model() if isinstance(backbone, PeftModel) else backbone
    if not getattr(base, "supports_gradient_checkpointing", False):
        raise ValueError(
            f"backbone.gradient_checkpointing: a '{base.config.model_type}' "
            "model does not support it"
        )
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def load_adapter(backbone: nn.Module, folder: Path, spec: ModelSpec, name: str) -> nn.Module:
    """The saved adapter (PEFT's format) or trained backbone weights (top_layers, full) on
    ``backbone``."""
    method = spec.adapter.method
    if method == "frozen":
        return backbone
    if method in ("top_layers", "full"):
        state = read_safetensors(folder / "backbone.safetensors")
        unknown = set(state) - set(dict(backbone.named_parameters()))
        if unknown:
            raise ArtifactError(
                f"{folder / 'backbone.safetensors'}: weights {sorted(unknown)[:3]} "
                f"are not in backbone {name}"
            )
        backbone.load_state_dict(state, strict=False)
        return backbone
    for file in ("adapter_config.json", "adapter_model.safetensors"):
        if not (folder / file).is_file():
            raise ArtifactError(
                f"{folder / file}: missing; the model's adapter ({method}) cannot be loaded "
                "without it, and the backbone alone would serve untrained predictions"
            )
    read_safetensors(folder / "adapter_model.safetensors")  # fail early, with the file name
    try:
        return PeftModel.from_pretrained(backbone, folder)
    except (RuntimeError, ValueError, KeyError) as err:
        raise ArtifactError(f"{folder}: adapter does not fit backbone {name} ({err})") from None


@torch.no_grad()
def set_base_weights(backbone: nn.Module, state: dict[str, torch.Tensor], where: Path) -> None:
    """Copy base weights, named as in the plain backbone, into ``backbone`` (adapted by PEFT or
    not: a LoRA layer's weight is its ``base_layer``'s)."""
    base = backbone.get_base_model() if isinstance(backbone, PeftModel) else backbone
    own = {name.replace(".base_layer", ""): value for name, value in base.state_dict().items()}
    for name, value in state.items():
        if name not in own or own[name].shape != value.shape:
            raise ArtifactError(f"{where}: weight {name} does not fit the backbone")
        own[name].copy_(value)


def load_head(head: nn.Module, path: Path) -> None:
    try:
        head.load_state_dict(read_safetensors(path))
    except RuntimeError as err:
        raise ArtifactError(f"{path}: does not match the head the spec describes ({err})") from None


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file as torch tensors, with an error naming the file."""
    return read_arrays(path, framework="pt")
