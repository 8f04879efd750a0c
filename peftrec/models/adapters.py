"""Make a backbone trainable in one of peftrec's adaptation methods.

A closed set, so a dict literal rather than a registry: ``lora``, ``prefix`` and any other PEFT
method (``peft`` + ``peft_type``) wrap the backbone with PEFT; ``qlora`` is LoRA on a backbone
loaded in 4 or 8 bits; ``top_layers`` trains only the last k transformer blocks and what follows
them; ``full`` trains everything; ``frozen`` nothing. Extra options in ``peft_kwargs`` go straight
to PEFT's own config class, so a new PEFT option needs no change here.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from peft import LoraConfig, PeftModel, PrefixTuningConfig, TaskType, get_peft_model
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from torch import nn

logger = logging.getLogger(__name__)

# LoRA targets for architectures PEFT has no default for (PEFT's own table,
# TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING, covers BERT, GPT-2, LLaMA, Qwen, ... and PEFT
# applies it itself); override with adapter.target_modules. Others fall back to every linear layer.
EXTRA_LORA_TARGETS: dict[str, list[str]] = {
    "mpnet": ["q", "v"],
    "distilbert": ["q_lin", "v_lin"],
    "phi3": ["qkv_proj"],
}
CONV1D_ARCHITECTURES = {"gpt2"}  # weights stored transposed: LoRA needs fan_in_fan_out
# Where the stack of transformer blocks lives, per architecture (top_layers).
BLOCKS: dict[str, str] = {
    "bert": "encoder.layer",
    "roberta": "encoder.layer",
    "xlm-roberta": "encoder.layer",
    "electra": "encoder.layer",
    "mpnet": "encoder.layer",
    "distilbert": "transformer.layer",
    "gpt2": "h",
    "opt": "decoder.layers",
    "llama": "layers",
    "mistral": "layers",
    "qwen2": "layers",
    "qwen3": "layers",
    "gemma": "layers",
    "phi3": "layers",
}
PEFT_METHODS = {"lora", "qlora", "prefix", "peft"}
PROMPT_METHODS = {"PREFIX_TUNING", "PROMPT_TUNING", "P_TUNING"}


def lora_config(model_type: str, cfg) -> LoraConfig:
    """PEFT's LoraConfig with per-architecture defaults; ``cfg.peft_kwargs`` pass
    straight through."""
    targets = cfg.target_modules
    if not targets and model_type not in TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING:
        targets = EXTRA_LORA_TARGETS.get(model_type, "all-linear")
    options: dict[str, Any] = {
        "task_type": TaskType.FEATURE_EXTRACTION,
        "r": cfg.r,
        "lora_alpha": cfg.alpha,
        "lora_dropout": cfg.dropout,
        "target_modules": "all-linear" if targets == ["all-linear"] else targets or None,
        "fan_in_fan_out": model_type in CONV1D_ARCHITECTURES,
    }
    return LoraConfig(**{**options, **cfg.peft_kwargs})


def peft_config(model_type: str, cfg):
    """The PEFT config object for a PEFT-based method."""
    if cfg.method in ("lora", "qlora"):
        return lora_config(model_type, cfg)
    if cfg.method == "prefix":
        return PrefixTuningConfig(
            task_type=TaskType.FEATURE_EXTRACTION,
            num_virtual_tokens=cfg.num_virtual_tokens,
            **cfg.peft_kwargs,
        )
    peft_type = (cfg.peft_type or "").upper()
    if peft_type not in PEFT_TYPE_TO_CONFIG_MAPPING:
        raise ValueError(
            f"adapter.peft_type {cfg.peft_type!r} is not a PEFT method; "
            f"choose one of {sorted(str(t) for t in PEFT_TYPE_TO_CONFIG_MAPPING)}"
        )
    kwargs = dict(cfg.peft_kwargs)
    if peft_type in PROMPT_METHODS:
        kwargs.setdefault("num_virtual_tokens", cfg.num_virtual_tokens)
    return PEFT_TYPE_TO_CONFIG_MAPPING[peft_type](task_type=TaskType.FEATURE_EXTRACTION, **kwargs)


def quantization_config(cfg):
    """bitsandbytes settings for ``qlora`` (4-bit nf4 or 8-bit), else None."""
    if cfg.method != "qlora":
        return None
    from transformers import BitsAndBytesConfig

    if cfg.quant_bits == 4:
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.float32,
            bnb_4bit_use_double_quant=True,
        )
    if cfg.quant_bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    raise ValueError(f"adapter.quant_bits must be 4 or 8, got {cfg.quant_bits}")


def disable_4bit_cpu_repacking(model: nn.Module) -> None:
    """Stop bitsandbytes from repacking 4-bit weights for CPU inference at the first eval forward.

    bitsandbytes 0.50 packs a ``Linear4bit`` weight into a CPU inference layout the first time it
    runs in eval mode, and keeps it packed; a later training step through that layout fails
    (in-place bias add on a leaf), and the packed layout rounds scales to bf16, so a loaded
    model would not reproduce the trained one's predictions. Keep the standard layout.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def transformer_blocks(model: nn.Module) -> nn.ModuleList:
    """The backbone's stack of transformer blocks, found per architecture or by shape."""
    path = BLOCKS.get(model.config.model_type)
    if path is not None:
        return model.get_submodule(path)
    depth = getattr(model.config, "num_hidden_layers", None)
    stacks = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) == depth]
    if not stacks:
        raise ValueError(
            f"top_layers: cannot find the {depth} transformer blocks of a "
            f"'{model.config.model_type}' model; use another adapter.method"
        )
    return max(stacks, key=lambda m: sum(p.numel() for p in m.parameters()))


def unfreeze_top_layers(model: nn.Module, k: int) -> list[str]:
    """Freeze all but the last ``k`` blocks and the parameters that come after them.

    "After" means registered after the block stack (e.g. GPT-2's ``ln_f``, a final norm); the
    embeddings and everything before the stack stay frozen. Returns the trained parameter names.
    """
    blocks = transformer_blocks(model)
    if not 1 <= k <= len(blocks):
        raise ValueError(f"adapter.top_k_layers must be between 1 and {len(blocks)}, got {k}")
    set_trainable(model, False)
    block_ids = {id(p): i for i, block in enumerate(blocks) for p in block.parameters()}
    stack_seen, trained = False, []
    for name, param in model.named_parameters():
        if id(param) in block_ids:
            stack_seen = True
            param.requires_grad_(block_ids[id(param)] >= len(blocks) - k)
        else:
            param.requires_grad_(
                stack_seen and not name.startswith("pooler.")
            )  # BERT's pooler is unused
        if param.requires_grad:
            trained.append(name)
    return trained


def set_trainable(model: nn.Module, trainable: bool) -> None:
    for parameter in model.parameters():
        parameter.requires_grad_(trainable)


def apply_adapter(backbone: nn.Module, cfg) -> nn.Module:
    """Wrap or (un)freeze ``backbone`` as ``cfg.method`` asks (cfg:
    peftrec.config.AdapterConfig)."""
    method = cfg.method
    if method in PEFT_METHODS:
        if method == "qlora":
            from peft import prepare_model_for_kbit_training

            backbone = prepare_model_for_kbit_training(backbone, use_gradient_checkpointing=False)
        return get_peft_model(backbone, peft_config(backbone.config.model_type, cfg))
    actions = {
        "full": lambda: set_trainable(backbone, True),
        "frozen": lambda: set_trainable(backbone, False),
        "top_layers": lambda: unfreeze_top_layers(backbone, cfg.top_k_layers),
    }
    if method not in actions:
        raise ValueError(
            f"unknown adapter.method {method!r}; choose one of "
            f"{sorted(PEFT_METHODS | set(actions))}"
        )
    actions[method]()
    return backbone


def adapter_state(backbone: nn.Module) -> dict | None:
    """Trained backbone weights that PEFT does not save itself (full, top_layers), else None."""
    if isinstance(backbone, PeftModel):
        return None
    trained = {
        name: p.detach().cpu().contiguous()
        for name, p in backbone.named_parameters()
        if p.requires_grad
    }
    return trained or None
