"""Make a backbone trainable in one of peftrec's adaptation methods."""

from __future__ import annotations

import logging
from typing import Any

from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from torch import nn

logger = logging.getLogger(__name__)

# LoRA targets per architecture (attention query and value projections); override with
# adapter.target_modules. Unknown architectures fall back to every linear layer.
LORA_TARGETS: dict[str, list[str]] = {
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "xlm-roberta": ["query", "value"],
    "electra": ["query", "value"],
    "mpnet": ["q", "v"],
    "distilbert": ["q_lin", "v_lin"],
    "gpt2": ["c_attn"],
    "llama": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
    "qwen3": ["q_proj", "v_proj"],
    "gemma": ["q_proj", "v_proj"],
    "phi3": ["qkv_proj"],
    "opt": ["q_proj", "v_proj"],
}
CONV1D_ARCHITECTURES = {"gpt2"}  # weights stored transposed: LoRA needs fan_in_fan_out


def lora_config(model_type: str, *, r: int, alpha: int, dropout: float,
                target_modules: list[str] | None, peft_kwargs: dict[str, Any]) -> LoraConfig:
    """PEFT's LoraConfig with per-architecture defaults; ``peft_kwargs`` pass straight through."""
    options: dict[str, Any] = {
        "task_type": TaskType.FEATURE_EXTRACTION,
        "r": r,
        "lora_alpha": alpha,
        "lora_dropout": dropout,
        "target_modules": target_modules or LORA_TARGETS.get(model_type, "all-linear"),
        "fan_in_fan_out": model_type in CONV1D_ARCHITECTURES,
    }
    options.update(peft_kwargs)
    return LoraConfig(**options)


def set_trainable(model: nn.Module, trainable: bool) -> None:
    for parameter in model.parameters():
        parameter.requires_grad_(trainable)


def apply_adapter(backbone: nn.Module, cfg) -> nn.Module:
    """Wrap or freeze ``backbone`` as ``cfg.method`` asks (cfg: peftrec.config.AdapterConfig)."""
    method = cfg.method
    if method == "lora":
        config = lora_config(backbone.config.model_type, r=cfg.r, alpha=cfg.alpha, dropout=cfg.dropout,
                             target_modules=cfg.target_modules, peft_kwargs=cfg.peft_kwargs)
        return get_peft_model(backbone, config)
    if method == "full":
        set_trainable(backbone, True)
        return backbone
    if method == "frozen":
        set_trainable(backbone, False)
        return backbone
    raise ValueError(
        f"adapter.method '{method}' is not supported by this version of peftrec; use lora, full or frozen"
    )


def adapter_state(backbone: nn.Module) -> dict | None:
    """Trained backbone weights that PEFT does not save itself (full fine-tuning), else None."""
    if isinstance(backbone, PeftModel):
        return None
    trained = {name: p.detach().cpu().contiguous() for name, p in backbone.named_parameters() if p.requires_grad}
    return trained or None
