"""Tiny BERT and GPT-2 checkpoints and toy ratings with a real signal, built offline in seconds.

The quick benchmark suite runs on these (``${tiny_bert}``, ``${tiny_gpt2}`` and ``${toy}`` in an
experiment's overrides). They are real model folders (config, safetensors weights, tokenizer
files), loaded through the same ``from_pretrained`` path as production backbones. The same
builders as ``tests/conftest.py``.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

WORDS = [
    "good",
    "bad",
    "movie",
    "film",
    "drama",
    "comedy",
    "action",
    "horror",
    "romance",
    "the",
    "a",
    "of",
    "and",
    "genres",
    "year",
    "old",
    "male",
    "female",
    "student",
    "writer",
    "engineer",
    "item",
    *list("0123456789"),
    ".",
    ",",
    ":",
    "(",
    ")",
    "-",
    "'",
]
VOCAB_SIZE = 99
ASSETS = (
    "tiny_bert",
    "tiny_gpt2",
    "toy",
)  # placeholder names, as ${name} in an experiment's overrides


def write_tiny_bert(folder: Path) -> Path:
    """A 2-layer BERT (hidden 64, 4 heads) with a 99-word WordPiece vocabulary."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    words += [f"w{k}" for k in range(VOCAB_SIZE - len(words))]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizer(vocab=str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(folder)
    return folder


def write_tiny_gpt2(folder: Path) -> Path:
    """A 2-layer GPT-2 (n_embd 64, 4 heads); like GPT-2, bos = eos and no pad token."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2Model, PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    words = ["<|endoftext|>", "<unk>", *WORDS]
    words += [f"w{k}" for k in range(VOCAB_SIZE - len(words))]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<unk>",
    ).save_pretrained(folder)
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=VOCAB_SIZE,
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_positions=128,
        bos_token_id=0,
        eos_token_id=0,
    )
    GPT2Model(config).save_pretrained(folder)
    return folder


def write_tiny_decoder(folder: Path, model_type: str = "llama") -> Path:
    """A 2-layer LLaMA-style decoder (``llama`` or ``qwen2``: RMSNorm, rotary positions, gated MLP;
    hidden 64, 4 heads) with a byte-level BPE tokenizer trained on the toy words, as these
    families ship (transformers picks the tokenizer class by model type and reads BPE files)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        LlamaConfig,
        LlamaModel,
        PreTrainedTokenizerFast,
        Qwen2Config,
        Qwen2Model,
    )

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(
        [" ".join(WORDS)] * 10 + [f"good movie {i} drama" for i in range(50)], trainer
    )
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<|endoftext|>", eos_token="<|endoftext|>"
    ).save_pretrained(folder)
    classes = {"llama": (LlamaConfig, LlamaModel), "qwen2": (Qwen2Config, Qwen2Model)}
    config_class, model_class = classes[model_type]
    torch.manual_seed(0)
    config = config_class(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=128,
        bos_token_id=0,
        eos_token_id=0,
        tie_word_embeddings=False,
    )
    model_class(config).save_pretrained(folder)
    return folder


def write_toy_data(
    folder: Path, num_users: int = 30, num_items: int = 60, per_user: int = 20, seed: int = 0
) -> dict[str, Path]:
    """``ratings.csv`` and ``items.csv``: "good" items score about 4.5, "bad" ones 1.5.

    A model can only predict an item it has not seen by reading its text.
    """
    rng = np.random.default_rng(seed)
    genres = ["drama", "comedy", "action", "horror", "romance"]
    good = rng.random(num_items) < 0.5
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "items.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["item_id", "title", "genres"])
        for i in range(num_items):
            writer.writerow(
                [f"i{i}", f"{'good' if good[i] else 'bad'} movie {i % 10}", genres[i % 5]]
            )
    with open(folder / "ratings.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["user_id", "item_id", "rating", "timestamp"])
        for u in range(num_users):
            for t, i in enumerate(rng.choice(num_items, per_user, replace=False)):
                rating = np.clip(round((4.5 if good[i] else 1.5) + rng.normal(0, 0.5)), 1, 5)
                writer.writerow([f"u{u}", f"i{i}", rating, 1000 * u + t])
    return {"interactions": folder / "ratings.csv", "items": folder / "items.csv"}


def build_assets(folder: Path) -> dict[str, str]:
    """Build (once) the tiny models and the toy data under ``folder``; their paths by
    placeholder name."""
    assets = {name: folder / name.replace("_", "-") for name in ASSETS}
    done = folder / ".complete"
    if not done.exists():
        write_tiny_bert(assets["tiny_bert"])
        write_tiny_gpt2(assets["tiny_gpt2"])
        write_toy_data(assets["toy"])
        done.touch()
    return {name: str(path) for name, path in assets.items()}
